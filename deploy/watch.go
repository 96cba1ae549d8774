package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// RolloutError is a rollout that did not converge to the requested image:
// swarm paused it or rolled it back, its tasks kept failing, a node it
// needs is down, swarm cannot place a task, the prepull failed, or the
// timeout ran out. The docker CLI reports success after an automatic
// rollback (docker/cli#6752); labreg reports this error.
type RolloutError struct {
	// Service is the service name.
	Service string
	// State is swarm's update state ("paused", "rollback_completed", ...),
	// or labreg's: "failing" (tasks keep failing without an update state),
	// "node down", "cannot place", "prepull failed", "timeout".
	State string
	// Message is swarm's update status message, or what labreg saw.
	Message string
	// Task names the failing task ("task abc123 (slot 1 on worker1, failed)").
	Task string
	// TaskErr is the failing task's error, e.g. "task: non-zero exit (1)".
	TaskErr string
	// Image is the image the rollout was for.
	Image string
	// Hint is the likely cause and fix, when labreg can tell.
	Hint string
	// Rollback: the failed rollout was a requested rollback.
	Rollback bool
}

func (e *RolloutError) Error() string {
	var b strings.Builder
	what := "rollout"
	if e.Rollback {
		what = "rollback"
	}
	fmt.Fprintf(&b, "service %s: %s failed (%s)", e.Service, what, strings.ReplaceAll(e.State, "_", " "))
	if e.Image != "" {
		fmt.Fprintf(&b, " for %s", e.Image)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.TaskErr != "" {
		fmt.Fprintf(&b, "; %s: %s", e.Task, e.TaskErr)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, " (%s)", e.Hint)
	}
	return b.String()
}

// Result describes a converged rollout.
type Result struct {
	// Service is the service name, ID its swarm ID.
	Service, ID string
	// Image is the pinned image every task runs (repo:tag@sha256:...).
	Image string
	// Created is true when the service did not exist before.
	Created bool
	// Tasks is how many tasks run Image.
	Tasks int
	// LastRunning is the engine's timestamp of the last task reaching running.
	LastRunning time.Time
	// Converged is when the watcher saw every task of the new spec running.
	Converged time.Time
	// Warnings are the engine's warnings.
	Warnings []string
}

// watchSpec says which service a watch follows, what for, and how long.
type watchSpec struct {
	id, name string
	goal
	timeout time.Duration
	// deadline, when set, ends the watch instead of timeout (a Deploy's
	// prepull used part of its timeout).
	deadline time.Time
	// noAuth: registry credentials were not forwarded (nodes pull anonymously).
	noAuth bool
}

// watch follows the rollout of ws.id until it converges or fails,
// reporting progress events.
func (c *Client) watch(ctx context.Context, ws watchSpec) (Result, error) {
	switch {
	case !ws.deadline.IsZero():
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, ws.deadline)
		defer cancel()
	case ws.timeout > 0:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ws.timeout)
		defer cancel()
	}
	rep := newReporter(c.opts.OnProgress, ws.name, ws.rollback)
	var (
		m       memory
		last    outcome
		nodes   []swarm.Node
		nodesAt time.Time
		res     = Result{Service: ws.name, ID: ws.id}
	)
	tick := time.NewTicker(c.opts.PollInterval)
	defer tick.Stop()
	for {
		// Nodes change slowly: read them once a second.
		if time.Since(nodesAt) > time.Second {
			nl, err := c.api.NodeList(ctx, client.NodeListOptions{})
			if err != nil {
				return res, ctxErr(ctx, ws, last, fmt.Errorf("listing nodes: %w", err))
			}
			nodes, nodesAt = nl.Items, time.Now()
		}
		o, err := c.observe(ctx, ws.id, ws.name)
		if err != nil {
			return res, ctxErr(ctx, ws, last, err)
		}
		o.Nodes = nodes
		if c.opts.Logger.Enabled(ctx, slog.LevelDebug) {
			var ns []string
			for _, n := range nodes {
				ns = append(ns, shortID(n.ID)+"/"+n.Description.Hostname+"/"+string(n.Status.State))
			}
			c.opts.Logger.Debug("rollout poll", "service", ws.name, "update", o.Service.UpdateStatus, "tasks", debugTasks(o.Tasks), "old", debugTasks(o.Old), "nodes", ns)
		}
		var out outcome
		m, out = decide(ws.goal, m, o)
		last = out
		res.Image = out.want
		rep.outcome(out)
		switch out.phase {
		case phaseFailed:
			e := out.failure
			if t := out.failedTask; t != nil && isPullError(e.TaskErr) {
				e.Hint = c.pullHint(ctx, taskImage(t), nodeName(t.NodeID, hostnames(nodes)), e.TaskErr, ws.noAuth)
			}
			rep.emit(Progress{Stage: StageError, Message: e.Error()})
			return res, e
		case phaseConverged:
			res.Tasks, res.LastRunning, res.Converged = out.running, out.lastRunning, m.convergedAt
			rep.emit(Progress{Stage: StageConverged, Running: out.running, Total: out.expected, Image: out.want})
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, ctxErr(ctx, ws, last, ctx.Err())
		case <-tick.C:
		}
	}
}

// observe reads the service and its tasks, split into the current spec's
// and the others.
func (c *Client) observe(ctx context.Context, id, name string) (observation, error) {
	var o observation
	svc, err := c.api.ServiceInspect(ctx, id, client.ServiceInspectOptions{})
	if err != nil {
		return o, fmt.Errorf("inspecting service %s: %w", name, err)
	}
	o.Service = svc.Service
	cur, err := c.api.TaskList(ctx, client.TaskListOptions{
		Filters: make(client.Filters).Add("service", svc.Service.ID).Add("_up-to-date", "true"),
	})
	if err != nil {
		return o, fmt.Errorf("listing tasks of %s: %w", name, err)
	}
	all, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", svc.Service.ID)})
	if err != nil {
		return o, fmt.Errorf("listing tasks of %s: %w", name, err)
	}
	o.Now = time.Now()
	o.Tasks = cur.Items
	isCur := map[string]bool{}
	for _, t := range cur.Items {
		isCur[t.ID] = true
	}
	for _, t := range all.Items {
		if !isCur[t.ID] {
			o.Old = append(o.Old, t)
		}
	}
	return o, nil
}

// ctxErr turns the watch's deadline into a *RolloutError that says what
// the rollout still waited for; other errors pass through.
func ctxErr(ctx context.Context, ws watchSpec, last outcome, err error) error {
	if ctx.Err() != context.DeadlineExceeded {
		return err
	}
	msg := fmt.Sprintf("not converged after %s", ws.timeout)
	if last.expected > 0 {
		msg += fmt.Sprintf("; %d of %d tasks run %s", last.running, last.expected, shortImage(last.want))
	}
	for _, s := range last.stuck {
		msg += "; " + s.String()
	}
	for _, r := range last.rows {
		if r.Image == last.want && r.State == swarm.TaskStateRunning {
			continue
		}
		msg += "; " + rowName(r, last.global) + " " + string(r.State)
		if r.Err != "" {
			msg += ": " + oneLine(r.Err)
		}
	}
	return &RolloutError{Service: ws.name, State: "timeout", Message: msg, Image: last.want, Rollback: ws.rollback}
}

// rowName is "slot 2 on worker1", "slot 2" (unplaced) or "node worker1".
func rowName(r row, global bool) string {
	switch {
	case global:
		return "node " + r.Node
	case r.Node != "":
		return fmt.Sprintf("slot %d on %s", r.Slot, r.Node)
	default:
		return fmt.Sprintf("slot %d", r.Slot)
	}
}

// reporter turns outcomes into progress events, each only when it changed.
type reporter struct {
	on       func(Progress)
	service  string
	rollback bool
	last     map[string]Progress
	rolling  bool
}

func newReporter(on func(Progress), service string, rollback bool) *reporter {
	if on == nil {
		on = func(Progress) {}
	}
	return &reporter{on: on, service: service, rollback: rollback, last: map[string]Progress{}}
}

func (r *reporter) emit(p Progress) {
	p.Service = r.service
	if r.rollback {
		p.Rollback = true
	}
	key := string(p.Stage)
	switch p.Stage {
	case StageTask, StageStuck:
		key += fmt.Sprintf("/%d/%s", p.Slot, p.Node)
		if p.Slot == 0 && p.Node == "" {
			key += "/" + p.Message
		}
	case StageError, StageConverged:
		r.on(p)
		return
	}
	if prev, ok := r.last[key]; ok && prev == p {
		return
	}
	r.last[key] = p
	r.on(p)
}

func (r *reporter) outcome(out outcome) {
	if out.rollingBack && !r.rolling {
		r.rolling = true
		r.emit(Progress{Stage: StageRollback, Image: out.want, Message: out.updateMsg})
	}
	if out.phase == phaseFailed {
		return
	}
	if out.expected <= 20 {
		for _, rw := range out.rows {
			p := Progress{Stage: StageTask, Slot: rw.Slot, Node: rw.Node, State: string(rw.State), Image: rw.Image, Err: oneLine(rw.Err)}
			if rw.NodeDown {
				p.Message = "node down"
			}
			if out.global {
				p.Slot = 0
			}
			r.emit(p)
		}
	}
	for _, s := range out.stuck {
		r.emit(Progress{Stage: StageStuck, Slot: s.Slot, Node: s.Node, Message: s.Reason})
	}
	if out.global && out.expected == 0 {
		r.emit(Progress{Stage: StageOverall, Message: "waiting for new tasks"})
	} else {
		r.emit(Progress{Stage: StageOverall, Running: out.running, Total: out.expected, Rollback: out.rollingBack})
	}
	if out.phase == phaseVerifying {
		r.emit(Progress{Stage: StageVerify, Running: out.running, Total: out.expected, Image: out.want, Took: out.monitor})
	}
}

// debugTasks lists tasks for the debug log: ID, slot, node, desired and
// observed state, short digest.
func debugTasks(ts []swarm.Task) []string {
	var out []string
	for _, t := range ts {
		out = append(out, fmt.Sprintf("%s/%d/%s/%s/%s/%s", shortID(t.ID), t.Slot, shortID(t.NodeID), t.DesiredState, t.Status.State, shortDigest(taskImage(&t))))
	}
	return out
}

func taskImage(t *swarm.Task) string {
	if t.Spec.ContainerSpec == nil {
		return ""
	}
	return t.Spec.ContainerSpec.Image
}

func taskErr(t *swarm.Task) string {
	if t.Status.Err != "" {
		return t.Status.Err
	}
	return t.Status.Message
}

// describeTask is "task abc123def456 (slot 1 on worker1, failed)", or
// "(node worker1, rejected)" for a global task.
func describeTask(t *swarm.Task, node string) string {
	where := "node " + node
	switch {
	case t.Slot != 0 && t.NodeID == "":
		where = fmt.Sprintf("slot %d", t.Slot)
	case t.Slot != 0:
		where = fmt.Sprintf("slot %d on %s", t.Slot, node)
	}
	return fmt.Sprintf("task %s (%s, %s)", shortID(t.ID), where, t.Status.State)
}

// nodeName is the hostname of the node with ID id, else the short ID.
func nodeName(id string, hostnames map[string]string) string {
	if h := hostnames[id]; h != "" {
		return h
	}
	return shortID(id)
}

// hostnames maps node IDs to hostnames.
func hostnames(nodes []swarm.Node) map[string]string {
	m := make(map[string]string, len(nodes))
	for _, n := range nodes {
		m[n.ID] = n.Description.Hostname
	}
	return m
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// shortDigest is "sha256:0123456789ab" for an image with a digest.
func shortDigest(image string) string {
	_, d := splitDigest(image)
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// shortImage shortens the digest of a pinned image for display.
func shortImage(image string) string {
	n, d := splitDigest(image)
	if d == "" {
		return image
	}
	return n + "@" + shortDigest(image)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:119] + "…"
	}
	return s
}
