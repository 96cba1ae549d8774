package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// RolloutError is a rollout that did not converge to the requested image:
// swarm paused it or rolled it back, or its tasks kept failing. The docker
// CLI reports success after an automatic rollback (docker/cli#6752);
// labreg reports this error.
type RolloutError struct {
	// Service is the service name.
	Service string
	// State is swarm's update state ("paused", "rollback_completed", ...)
	// or "failing" when tasks keep failing without an update state.
	State string
	// Message is swarm's update status message.
	Message string
	// Task names the failing task ("slot 1, task abc123" / "node n1, task ..").
	Task string
	// TaskErr is the failing task's error, e.g. "task: non-zero exit (1)".
	TaskErr string
	// Image is the image the rollout was for.
	Image string
	// Hint is the likely cause and fix, when labreg can tell.
	Hint string
}

func (e *RolloutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "service %s: rollout failed (%s)", e.Service, strings.ReplaceAll(e.State, "_", " "))
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

// numbered orders task states like the docker CLI does.
var numbered = map[swarm.TaskState]int{
	swarm.TaskStateNew: 1, swarm.TaskStateAllocated: 2, swarm.TaskStatePending: 3,
	swarm.TaskStateAssigned: 4, swarm.TaskStateAccepted: 5, swarm.TaskStatePreparing: 6,
	swarm.TaskStateReady: 7, swarm.TaskStateStarting: 8, swarm.TaskStateRunning: 9,
	swarm.TaskStateComplete: 10, swarm.TaskStateShutdown: 11, swarm.TaskStateFailed: 12,
	swarm.TaskStateRejected: 13,
}

func terminal(s swarm.TaskState) bool { return numbered[s] > numbered[swarm.TaskStateRunning] }

// watchSpec says what a watch waits for.
type watchSpec struct {
	id, name string
	// want is the image the tasks must run; "" means the service's current
	// spec image (rollback).
	want string
	// rollback is true for a requested rollback: rollback_completed is success.
	rollback bool
	// before is the update status before the request; an identical status
	// afterwards is stale and ignored.
	before *swarm.UpdateStatus
	// created: a new service (no update status ever).
	created bool
	timeout time.Duration
	// deadline, when set, ends the watch instead of timeout (a Deploy's
	// prepull used part of its timeout).
	deadline time.Time
	// noAuth: registry credentials were not forwarded (nodes pull anonymously).
	noAuth bool
}

func sameStatus(a, b *swarm.UpdateStatus) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.State == b.State && a.Message == b.Message &&
		((a.StartedAt == nil) == (b.StartedAt == nil)) && (a.StartedAt == nil || a.StartedAt.Equal(*b.StartedAt))
}

// watch follows the rollout of ws.id until it converges or fails,
// printing docker-style progress lines to the progress writer.
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
	p := newPrinter(c.opts.Progress, ws.name)
	var (
		nodes       map[string]string // active node ID -> hostname
		nodesAt     time.Time
		lastFail    *swarm.Task
		failed      = map[string]bool{}
		rollingBack bool
		verifying   bool
		res         = Result{Service: ws.name, ID: ws.id}
	)
	tick := time.NewTicker(c.opts.PollInterval)
	defer tick.Stop()
	for {
		svcRes, err := c.api.ServiceInspect(ctx, ws.id, client.ServiceInspectOptions{})
		if err != nil {
			return res, c.ctxErr(ctx, ws, fmt.Errorf("inspecting service %s: %w", ws.name, err))
		}
		svc := svcRes.Service
		want := ws.want
		if want == "" {
			want = svc.Spec.TaskTemplate.ContainerSpec.Image
		}
		res.Image = want
		if time.Since(nodesAt) > time.Second {
			if nodes, err = c.activeNodes(ctx); err != nil {
				return res, c.ctxErr(ctx, ws, err)
			}
			nodesAt = time.Now()
		}
		tl, err := c.api.TaskList(ctx, client.TaskListOptions{
			Filters: make(client.Filters).Add("service", svc.ID).Add("_up-to-date", "true"),
		})
		if err != nil {
			return res, c.ctxErr(ctx, ws, fmt.Errorf("listing tasks of %s: %w", ws.name, err))
		}
		// Remember the latest failure of a task that runs the wanted image.
		for i := range tl.Items {
			t := &tl.Items[i]
			if (t.Status.State == swarm.TaskStateFailed || t.Status.State == swarm.TaskStateRejected) &&
				taskImage(t) == want && !failed[t.ID] {
				failed[t.ID] = true
				if lastFail == nil || t.Status.Timestamp.After(lastFail.Status.Timestamp) {
					lastFail = t
				}
			}
		}

		us := svc.UpdateStatus
		if sameStatus(us, ws.before) && !ws.created {
			us = nil // stale: from an earlier update
		}
		state := swarm.UpdateState("")
		msg := ""
		if us != nil {
			state, msg = us.State, us.Message
		}
		fail := func(st string) error {
			e := &RolloutError{Service: ws.name, State: st, Message: msg, Image: want}
			if lastFail == nil {
				// The failed task may have left the up-to-date set already
				// (swarm rolled the spec back): look at all tasks.
				lastFail = c.lastFailed(ctx, svc.ID, ws.want)
			}
			if lastFail != nil {
				e.Task, e.TaskErr = describeTask(lastFail, nodes), taskErr(lastFail)
				if isPullError(e.TaskErr) {
					e.Hint = c.pullHint(ctx, taskImage(lastFail), ws.noAuth)
				}
			}
			p.line("error", e.Error())
			return e
		}
		if !ws.rollback {
			switch state {
			case swarm.UpdateStatePaused:
				return res, fail(string(state))
			case swarm.UpdateStateRollbackPaused:
				return res, fail(string(state))
			case swarm.UpdateStateRollbackStarted, swarm.UpdateStateRollbackCompleted:
				if !rollingBack {
					p.line("rollback", msg)
				}
				rollingBack = true
				// keep watching until swarm finishes rolling back, so the
				// service runs the old image when we return.
				want = svc.Spec.TaskTemplate.ContainerSpec.Image
			}
		} else if state == swarm.UpdateStateRollbackPaused || state == swarm.UpdateStatePaused {
			return res, fail(string(state))
		}

		// A global service is converged when every node that runs (or is
		// to run) one of its tasks runs the new one; with an update delay
		// the nodes not yet updated have no up-to-date task at all (the
		// docker CLI counts only those and ends too early).
		var eligible map[string]bool
		if svc.Spec.Mode.Global != nil {
			all, err := c.api.TaskList(ctx, client.TaskListOptions{
				Filters: make(client.Filters).Add("service", svc.ID).Add("desired-state", "running"),
			})
			if err != nil {
				return res, c.ctxErr(ctx, ws, fmt.Errorf("listing tasks of %s: %w", ws.name, err))
			}
			eligible = map[string]bool{}
			for _, t := range all.Items {
				if _, ok := nodes[t.NodeID]; ok && t.NodeID != "" {
					eligible[t.NodeID] = true
				}
			}
		}
		running, expected, last := p.update(svc, tl.Items, nodes, eligible, want, rollingBack || ws.rollback)
		converged := expected > 0 && running == expected
		if rollingBack && converged && state == swarm.UpdateStateRollbackCompleted {
			// rolled back and running the old image again: report the failure.
			return res, fail(string(state))
		}
		if converged && res.Converged.IsZero() {
			res.Converged, res.LastRunning, res.Tasks = time.Now(), last, running
		}
		if !converged {
			res.Converged = time.Time{}
			verifying = false
		}
		if converged && !rollingBack {
			mon := 5 * time.Second
			cfg := svc.Spec.UpdateConfig
			if ws.rollback {
				cfg = svc.Spec.RollbackConfig
			}
			if cfg != nil && cfg.Monitor > 0 {
				mon = cfg.Monitor
			}
			// Done when swarm says so, or (like the docker CLI) when every
			// task has stayed running for the update monitor period, the
			// window in which swarm would still act on a failure.
			stable := time.Since(res.Converged) >= mon
			done := false
			switch {
			case ws.rollback:
				done = state == swarm.UpdateStateRollbackCompleted || (state == swarm.UpdateStateRollbackStarted && stable)
			case us == nil, state == swarm.UpdateStateCompleted:
				done = true
			case state == swarm.UpdateStateUpdating:
				done = stable
			}
			if done {
				p.line("verify", fmt.Sprintf("Service %s converged: %d/%d tasks run %s", ws.name, running, expected, shortImage(want)))
				return res, nil
			}
			if !verifying {
				p.line("verify", fmt.Sprintf("all %d tasks run %s; waiting %s to verify that they are stable", running, shortImage(want), mon))
				verifying = true
			}
		}
		// Without an update in flight (a new service, or failure action
		// "continue"), swarm never gives up: stop when tasks keep failing.
		if (us == nil || state == swarm.UpdateStateCompleted) && !converged && len(failed) >= max(3, 2*expected) {
			return res, fail("failing")
		}
		select {
		case <-ctx.Done():
			return res, c.ctxErr(ctx, ws, ctx.Err())
		case <-tick.C:
		}
	}
}

// pullHint explains a node's pull failure: it asks the registry for image
// without credentials, as a node does when credentials are not forwarded.
func (c *Client) pullHint(ctx context.Context, image string, noAuth bool) string {
	host := imageHost(image)
	ref, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, herr := remote.Head(ref, remote.WithContext(ctx))
	var te *transport.Error
	if errors.As(herr, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		if noAuth {
			return fmt.Sprintf("registry %s refuses anonymous pulls (%d) and no credentials were forwarded (--with-registry-auth=false, or no docker login for it here): run docker login %s here and deploy with --with-registry-auth", host, te.StatusCode, host)
		}
		return fmt.Sprintf("registry %s refuses anonymous pulls (%d) and the forwarded credentials did not work on the node: check docker login %s", host, te.StatusCode, host)
	}
	if noAuth {
		return fmt.Sprintf("nodes pull from %s anonymously because no credentials were forwarded; if the registry needs a login, docker login here and deploy with --with-registry-auth", host)
	}
	return fmt.Sprintf("check that every eligible node reaches %s and trusts it (labreg doctor)", host)
}

// lastFailed returns the most recent failed or rejected task of service
// that ran image (any image when image is ""), or nil.
func (c *Client) lastFailed(ctx context.Context, service, image string) *swarm.Task {
	tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", service)})
	if err != nil {
		return nil
	}
	var last *swarm.Task
	for i := range tl.Items {
		t := &tl.Items[i]
		if t.Status.State != swarm.TaskStateFailed && t.Status.State != swarm.TaskStateRejected {
			continue
		}
		if image != "" && taskImage(t) != image {
			continue
		}
		if last == nil || t.Status.Timestamp.After(last.Status.Timestamp) {
			last = t
		}
	}
	return last
}

func (c *Client) ctxErr(ctx context.Context, ws watchSpec, err error) error {
	if ctx.Err() == context.DeadlineExceeded {
		return &RolloutError{Service: ws.name, State: "timeout", Message: fmt.Sprintf("not converged after %s", ws.timeout)}
	}
	return err
}

// activeNodes maps the IDs of nodes that are not down to their hostnames.
func (c *Client) activeNodes(ctx context.Context) (map[string]string, error) {
	res, err := c.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	m := map[string]string{}
	for _, n := range res.Items {
		if n.Status.State != swarm.NodeStateDown {
			m[n.ID] = n.Description.Hostname
		}
	}
	return m, nil
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

func describeTask(t *swarm.Task, nodes map[string]string) string {
	where := "node " + nodeName(t.NodeID, nodes)
	if t.Slot != 0 {
		where = fmt.Sprintf("slot %d on %s", t.Slot, nodeName(t.NodeID, nodes))
	}
	return fmt.Sprintf("task %s (%s, %s)", shortID(t.ID), where, t.Status.State)
}

func nodeName(id string, nodes map[string]string) string {
	if h := nodes[id]; h != "" {
		return h
	}
	return shortID(id)
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

// printer draws docker-style progress: one line per slot or node, written
// only when it changes (readable on a terminal and in CI logs alike).
type printer struct {
	w    io.Writer
	name string
	last map[string]string
	slot map[int]int
}

func newPrinter(w io.Writer, name string) *printer {
	return &printer{w: w, name: name, last: map[string]string{}, slot: map[int]int{}}
}

func (p *printer) line(id, action string) {
	if p.last[id] == action {
		return
	}
	p.last[id] = action
	fmt.Fprintf(p.w, "%s %s: %s\n", p.name, id, action)
}

// update draws the tasks and returns how many run want, how many are
// expected and when the last of them reached running.
func (p *printer) update(svc swarm.Service, tasks []swarm.Task, nodes map[string]string, eligible map[string]bool, want string, rollback bool) (int, int, time.Time) {
	var (
		running, expected int
		last              time.Time
		byKey             = map[string]swarm.Task{}
		keys              []string
	)
	global := svc.Spec.Mode.Global != nil
	for _, t := range tasks {
		if numbered[t.DesiredState] == 0 || numbered[t.Status.State] == 0 {
			continue
		}
		if t.NodeID != "" {
			if _, ok := nodes[t.NodeID]; !ok {
				continue
			}
		}
		key := fmt.Sprint(t.Slot)
		if global {
			key = t.NodeID
		}
		if ex, ok := byKey[key]; ok {
			// favour the lowest desired state, then the lowest observed
			// state (start-first updates), like the docker CLI.
			if numbered[ex.DesiredState] < numbered[t.DesiredState] ||
				(numbered[ex.DesiredState] == numbered[t.DesiredState] && numbered[ex.Status.State] <= numbered[t.Status.State]) {
				continue
			}
		} else {
			keys = append(keys, key)
		}
		byKey[key] = t
	}
	if global {
		expected = len(byKey)
		for n := range eligible {
			if _, ok := byKey[n]; !ok {
				expected++
			}
		}
	} else if r := svc.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
		expected = int(*r.Replicas)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := byKey[keys[i]], byKey[keys[j]]
		if a.Slot != b.Slot {
			return a.Slot < b.Slot
		}
		return nodeName(a.NodeID, nodes) < nodeName(b.NodeID, nodes)
	})
	for _, k := range keys {
		t := byKey[k]
		id := nodeName(t.NodeID, nodes)
		if !global {
			if p.slot[t.Slot] == 0 {
				p.slot[t.Slot] = len(p.slot) + 1
			}
			id = fmt.Sprintf("%d/%d", p.slot[t.Slot], expected)
		}
		img := taskImage(&t)
		ok := img == want && !terminal(t.DesiredState) && t.Status.State == swarm.TaskStateRunning
		if ok {
			running++
			if t.Status.Timestamp.After(last) {
				last = t.Status.Timestamp
			}
		}
		action := fmt.Sprintf("%-9s %s", t.Status.State, shortDigest(img))
		if t.Status.Err != "" {
			action = fmt.Sprintf("%-9s %s %s", t.Status.State, shortDigest(img), oneLine(t.Status.Err))
		}
		if expected <= 20 {
			p.line(id, action)
		}
	}
	what := "%d out of %d tasks"
	if rollback {
		what = "rolling back update: %d out of %d tasks"
	}
	if global && expected == 0 {
		p.line("overall progress", "waiting for new tasks")
	} else {
		p.line("overall progress", fmt.Sprintf(what, running, expected))
	}
	return running, expected, last
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:119] + "…"
	}
	return s
}
