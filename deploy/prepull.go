package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// PullTime is how long one node took to pull the image.
type PullTime struct {
	Node string
	Took time.Duration
	Err  string
}

// Prepull makes every node eligible under placement pull image before the
// rolling update, so that nodes that pull faster do not get all the new
// tasks (the lab's "1000 servers" imbalance). Its job runs with the same
// constraints and forwarded credentials, and its container never starts
// the application (its entrypoint does not exist): a task that got past
// "preparing" has the image. It reports the pull time per node and a
// summary (nodes, p50/p99, slowest node) through Options.OnProgress and
// returns the pull times.
//
// parallelism paces it: at most that many nodes pull at once. Swarm does
// the pacing, labreg only watches: the job is a replicated job with
// MaxConcurrent parallelism, one task per node at a time (MaxReplicas 1),
// as many completions as eligible nodes, and failed tasks restarted at
// once (each task fails: its command does not exist), which is how swarm
// hands the next node its turn. A task swarm hands to a node that already
// pulled finds the image there and is not waited for (swarm's scheduler
// avoids a node after 5 recent failures); the job is removed once every
// eligible node has pulled. parallelism 0, or
// at least the number of eligible nodes, pulls everywhere at once (a
// global job).
func (c *Client) Prepull(ctx context.Context, service, image string, placement *swarm.Placement, auth string, parallelism int) ([]PullTime, error) {
	if parallelism < 0 {
		return nil, fmt.Errorf("prepull parallelism %d: want 0 (all at once) or more", parallelism)
	}
	var constraints []string
	if placement != nil {
		constraints = placement.Constraints
	}
	paced := false
	var mode swarm.ServiceMode
	if parallelism > 0 {
		res, err := c.api.NodeList(ctx, client.NodeListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing nodes: %w", err)
		}
		eligible, err := eligibleNodes(res.Items, constraints)
		if err != nil {
			return nil, err
		}
		paced = parallelism < len(eligible)
		if paced {
			mode = swarm.ServiceMode{ReplicatedJob: &swarm.ReplicatedJob{
				MaxConcurrent: u64p(uint64(parallelism)), TotalCompletions: u64p(uint64(len(eligible)))}}
			// one task per node at a time
			pl := swarm.Placement{MaxReplicas: 1}
			if placement != nil {
				pl = *placement
				pl.MaxReplicas = 1
			}
			placement = &pl
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "labreg-prepull-" + service + "-" + hex.EncodeToString(b)
	if len(name) > 63 {
		name = name[len(name)-63:]
	}
	restart := &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}
	if !paced {
		mode = swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}}
	} else {
		// A replicated job does not replace a task that failed under
		// condition none: the job would stop after its first N tasks
		// (every task fails, its command does not exist). Restarted at
		// once, a task goes to the next node that has not pulled (or to
		// one that has, where it ends at once).
		var now time.Duration
		restart = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: &now}
	}
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{"labreg.prepull": service}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Command: []string{"/.labreg-prepull-does-not-run"}},
			Placement:     placement,
			RestartPolicy: restart,
		},
		Mode: mode,
	}
	r, err := c.api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if err != nil {
		return nil, fmt.Errorf("creating prepull job for %s: %w", service, err)
	}
	defer func() {
		// remove even when ctx was cancelled
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = c.api.ServiceRemove(rctx, r.ID, client.ServiceRemoveOptions{})
	}()
	msg := "every eligible node pulls " + shortImage(image)
	if paced {
		msg = fmt.Sprintf("%d eligible nodes pull %s, at most %d at once", *mode.ReplicatedJob.TotalCompletions, shortImage(image), parallelism)
	}
	c.opts.OnProgress(Progress{Service: service, Stage: StagePrepull, Image: image, Message: msg})
	start := time.Now()
	seen := map[string]time.Time{} // task -> first seen preparing
	done := map[string]PullTime{}  // node -> result
	skipped := map[string]bool{}   // nodes left out, said so once
	tick := time.NewTicker(c.opts.PollInterval)
	defer tick.Stop()
	// ended is the error of a prepull whose ctx ended (err: the poll's
	// error, or ctx's). It says which nodes had not pulled when the
	// deadline passed, from a fresh look rather than the last poll (a node
	// may have taken its task since, and the deadline may have cut a poll
	// short before its tasks were read).
	ended := func(pending map[string]swarm.TaskState, names map[string]string, err error) error {
		if ctx.Err() == nil {
			return prepullCtxErr(ctx, service, image, start, pending, names, err)
		}
		if p, n, ok := c.prepullPending(ctx, r.ID, done); ok {
			if paced {
				for id, st := range pending {
					if _, has := p[id]; !has && st == stateWaiting {
						p[id] = st
					}
				}
			}
			pending, names = p, n
		}
		return prepullCtxErr(ctx, service, image, start, pending, names, ctx.Err())
	}
	for {
		// Nodes are read on every poll: a node that goes down or leaves
		// during the prepull must not be waited for.
		ineligible, names, nodes, err := c.prepullNodes(ctx)
		if err != nil {
			return nil, ended(nil, names, err)
		}
		tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", r.ID)})
		if err != nil {
			return nil, ended(nil, names, fmt.Errorf("listing prepull tasks: %w", err))
		}
		pending := map[string]swarm.TaskState{} // node -> state of its task
		for _, t := range tl.Items {
			if _, ok := done[t.NodeID]; ok {
				continue
			}
			st := t.Status.State
			if st == swarm.TaskStateOrphaned || st == swarm.TaskStateRemove {
				continue
			}
			why, ok := ineligible[t.NodeID]
			if _, known := names[t.NodeID]; !known && t.NodeID != "" {
				why, ok = "no longer in the swarm", true
			}
			if ok {
				// down, drained or gone: waiting would never end
				if !skipped[t.NodeID] {
					skipped[t.NodeID] = true
					c.opts.OnProgress(Progress{Service: service, Stage: StagePrepull, Node: nodeName(t.NodeID, names),
						Message: fmt.Sprintf("%s is %s: not waiting for it", nodeName(t.NodeID, names), why)})
				}
				continue
			}
			if numbered[st] <= numbered[swarm.TaskStatePreparing] {
				if _, ok := seen[t.ID]; !ok && st == swarm.TaskStatePreparing {
					seen[t.ID] = time.Now()
				}
				pending[t.NodeID] = st
				continue
			}
			from, ok := seen[t.ID]
			if !ok {
				from = start
			}
			pt := PullTime{Node: nodeName(t.NodeID, names), Took: time.Since(from)}
			if st == swarm.TaskStateRejected || isPullError(t.Status.Err) {
				pt.Err = taskErr(&t)
			}
			c.opts.OnProgress(Progress{Service: service, Stage: StagePrepull, Node: pt.Node, Image: image, Took: pt.Took, Err: oneLine(pt.Err)})
			done[t.NodeID] = pt
		}
		if paced {
			// Swarm hands out tasks N at a time: an eligible node without
			// a task yet waits for its turn.
			eligible, err := eligibleNodes(nodes, constraints)
			if err != nil {
				return nil, err
			}
			for id := range eligible {
				if _, ok := done[id]; !ok {
					if _, ok := pending[id]; !ok {
						pending[id] = stateWaiting
					}
				}
			}
			for id := range pending {
				if id == "" {
					delete(pending, id) // a task not placed yet
				}
			}
			if len(pending) == 0 {
				break
			}
		} else if len(pending) == 0 && (len(done) > 0 || len(skipped) > 0) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ended(pending, names, ctx.Err())
		case <-tick.C:
		}
	}
	var out []PullTime
	var failed []string
	for _, pt := range done {
		out = append(out, pt)
		if pt.Err != "" {
			failed = append(failed, pt.Node+": "+pt.Err)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	if sum := pullSummary(out, time.Since(start)); sum != "" {
		c.opts.OnProgress(Progress{Service: service, Stage: StagePrepull, Image: image, Took: time.Since(start), Message: sum})
	}
	if len(failed) > 0 {
		// A *RolloutError like a prepull that timed out: the rollout did
		// not happen (exit status 3 in labreg's CLI).
		sort.Strings(failed)
		e := &RolloutError{Service: service, State: "prepull failed", Image: image,
			Message: fmt.Sprintf("%d node(s) could not pull: %s", len(failed), strings.Join(failed, "; "))}
		for _, pt := range out {
			if pt.Err != "" && isPullError(pt.Err) {
				e.Hint = c.pullHint(ctx, image, pt.Node, pt.Err, auth == "")
				break
			}
		}
		return out, e
	}
	return out, nil
}

// stateWaiting is the state a paced prepull reports for an eligible node
// swarm has not given a task yet.
const stateWaiting swarm.TaskState = "waiting for its turn"

// pullSummary is the one-line summary of a prepull: how many nodes pulled,
// the total time, the median and 99th percentile pull time and the
// slowest node. "" when no node pulled.
func pullSummary(pts []PullTime, total time.Duration) string {
	var ok []PullTime
	for _, pt := range pts {
		if pt.Err == "" {
			ok = append(ok, pt)
		}
	}
	if len(ok) == 0 {
		return ""
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i].Took < ok[j].Took })
	q := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(ok)))) - 1
		return ok[max(i, 0)].Took.Round(time.Millisecond)
	}
	last := ok[len(ok)-1]
	return fmt.Sprintf("%d node(s) pulled in %s: p50 %s, p99 %s, slowest %s (%s)",
		len(ok), total.Round(time.Millisecond), q(0.50), q(0.99), last.Node, last.Took.Round(time.Millisecond))
}

// prepullPending looks once more, after ctx ended, at which eligible nodes
// have not pulled yet (done are the nodes that finished).
func (c *Client) prepullPending(ctx context.Context, job string, done map[string]PullTime) (map[string]swarm.TaskState, map[string]string, bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	ineligible, names, _, err := c.prepullNodes(ctx)
	if err != nil {
		return nil, nil, false
	}
	tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", job)})
	if err != nil {
		return nil, nil, false
	}
	pending := map[string]swarm.TaskState{}
	for _, t := range tl.Items {
		_, finished := done[t.NodeID]
		_, skip := ineligible[t.NodeID]
		_, known := names[t.NodeID]
		if finished || skip || (!known && t.NodeID != "") || numbered[t.Status.State] == 0 || numbered[t.Status.State] > numbered[swarm.TaskStatePreparing] {
			continue
		}
		pending[t.NodeID] = t.Status.State
	}
	return pending, names, true
}

// prepullNodes returns the nodes a prepull does not wait for, with the
// reason: only ready and active nodes pull (a down, drained or paused node
// does not; a node that left the swarm is missing from names), and the
// hostname of every node.
func (c *Client) prepullNodes(ctx context.Context) (ineligible, names map[string]string, nodes []swarm.Node, err error) {
	res, err := c.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing nodes: %w", err)
	}
	ineligible, names = map[string]string{}, map[string]string{}
	for _, n := range res.Items {
		names[n.ID] = n.Description.Hostname
		switch {
		case n.Status.State != swarm.NodeStateReady:
			ineligible[n.ID] = string(n.Status.State)
		case n.Spec.Availability != swarm.NodeAvailabilityActive:
			ineligible[n.ID] = string(n.Spec.Availability)
		}
	}
	return ineligible, names, res.Items, nil
}

// prepullCtxErr turns a deadline (DeployOptions.Timeout) into a
// *RolloutError naming the nodes that had not pulled yet; other errors
// pass through.
func prepullCtxErr(ctx context.Context, service, image string, start time.Time, pending map[string]swarm.TaskState, names map[string]string, err error) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return err
	}
	var waiting []string
	for id, st := range pending {
		waiting = append(waiting, fmt.Sprintf("%s (%s)", nodeName(id, names), st))
	}
	sort.Strings(waiting)
	msg := fmt.Sprintf("prepull not done after %s", time.Since(start).Round(100*time.Millisecond))
	hint := "a node that cannot reach the registry, or a slow pull: check the node, or raise --timeout"
	if len(waiting) > 0 {
		msg += "; not pulled yet on " + strings.Join(waiting, ", ")
	} else {
		msg += "; no ready node has taken a prepull task yet"
		hint = "do the constraints match a ready, active node?"
	}
	return &RolloutError{Service: service, State: "timeout", Image: image, Message: msg, Hint: hint}
}

func u64p(v uint64) *uint64 { return &v }
