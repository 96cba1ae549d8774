package deploy

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// This file decides where a rollout stands from what one poll of the
// engine sees. decide is pure (no engine, no clock: the time comes with
// the observation), so every state is covered by table tests without a
// swarm (rollout_test.go); watch.go polls, reports and enriches failures.

// observation is what one poll of a rollout sees.
type observation struct {
	// Service is the service: spec and swarm's UpdateStatus.
	Service swarm.Service
	// Tasks are the tasks of the service's current spec (swarm's
	// "_up-to-date" filter).
	Tasks []swarm.Task
	// Old are the service's other tasks (earlier specs).
	Old []swarm.Task
	// Nodes are the swarm's nodes.
	Nodes []swarm.Node
	// Now is when the poll was made.
	Now time.Time
}

// goal is what a watch waits for.
type goal struct {
	// want is the image the tasks must run; "" means the service's current
	// spec image (rollback).
	want string
	// rollback: a requested rollback, rollback_completed is success.
	rollback bool
	// before is the update status before the request; an identical status
	// afterwards is stale and ignored.
	before *swarm.UpdateStatus
	// created: a new service (no update status ever).
	created bool
}

// memory is what a rollout carries from one poll to the next.
type memory struct {
	// convergedAt is when every task was first seen running the wanted
	// image (zero while not converged).
	convergedAt time.Time
	// rollingBack: swarm started rolling the update back.
	rollingBack bool
	// stuckSince is when a slot or node was first seen stuck (node down,
	// task swarm cannot place), zero while none is.
	stuckSince time.Time
}

// phase is where a rollout stands.
type phase int

const (
	phaseWaiting   phase = iota // tasks are still changing
	phaseVerifying              // every task runs the image; waiting out the monitor period
	phaseConverged              // done
	phaseFailed                 // done, not converged: see failure
)

// stuckGrace is how long a slot or node may stay stuck before the rollout
// fails: swarm reschedules the task of a node that went down within a
// second or two, and may place a pending task once another one stops.
const stuckGrace = 10 * time.Second

// portGrace is stuckGrace for slots that wait only for a host-mode port
// (swarm: "host-mode port already in use") with no node down: in a
// stop-first update the old container frees the port after its stop grace
// period and swarm places the new task at its next scheduling pass, which
// on a busy manager can take longer than stuckGrace.
const portGrace = 30 * time.Second

// row is the task that stands for one slot (replicated) or node (global).
type row struct {
	Slot     int
	NodeID   string
	Node     string // hostname, "" while unplaced
	State    swarm.TaskState
	Desired  swarm.TaskState
	Image    string
	Err      string
	NodeDown bool
	Since    time.Time
}

// outcome is one decision.
type outcome struct {
	phase phase
	// want is the image the tasks must run now (the old one while swarm
	// rolls back).
	want              string
	running, expected int
	// lastRunning is when the last task that runs want reached running.
	lastRunning time.Time
	global      bool
	// rows are the slots (by slot number) or nodes (by hostname).
	rows []row
	// stuck are the slots and nodes that keep the rollout from
	// converging, with the reason.
	stuck []stuck
	// monitor is the period every task must stay up (phaseVerifying).
	monitor time.Duration
	// rollingBack: swarm rolls the update back.
	rollingBack bool
	// updateMsg is swarm's update status message.
	updateMsg string
	// failure is set in phaseFailed, without Hint (finding one asks the
	// registry); failedTask is the task it names, if any.
	failure    *RolloutError
	failedTask *swarm.Task
}

// stuck is a slot or node that keeps the rollout from converging.
type stuck struct {
	Slot   int
	Node   string
	Reason string
}

func (s stuck) String() string {
	if s.Slot != 0 {
		return fmt.Sprintf("slot %d: %s", s.Slot, s.Reason)
	}
	return s.Reason
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

// nodeDown reports whether a node's engine is gone as far as the manager
// knows (down, or never heard of: removed from the swarm).
func nodeDown(n swarm.Node, known bool) bool {
	return !known || n.Status.State == swarm.NodeStateDown || n.Status.State == swarm.NodeStateDisconnected
}

// decide is one step of a rollout: from what the last step remembered and
// what this poll sees, where the rollout stands.
func decide(g goal, m memory, o observation) (memory, outcome) {
	svc := o.Service
	out := outcome{want: g.want, global: svc.Spec.Mode.Global != nil, rollingBack: m.rollingBack}
	if out.want == "" && svc.Spec.TaskTemplate.ContainerSpec != nil {
		out.want = svc.Spec.TaskTemplate.ContainerSpec.Image
	}
	nodes := map[string]swarm.Node{}
	for _, n := range o.Nodes {
		nodes[n.ID] = n
	}
	hostname := func(id string) string {
		if n, ok := nodes[id]; ok && n.Description.Hostname != "" {
			return n.Description.Hostname
		}
		return shortID(id)
	}
	isDown := func(id string) bool {
		n, ok := nodes[id]
		return id != "" && nodeDown(n, ok)
	}

	us := svc.UpdateStatus
	if sameStatus(us, g.before) && !g.created {
		us = nil // stale: from an earlier update
	}
	var state swarm.UpdateState
	msg := ""
	if us != nil {
		state, msg = us.State, us.Message
	}
	out.updateMsg = msg
	failed := func(st string, task *swarm.Task) (memory, outcome) {
		out.phase = phaseFailed
		// the image asked for, also when swarm rolled back to another
		img := g.want
		if img == "" {
			img = out.want
		}
		out.failure = &RolloutError{Service: svc.Spec.Name, State: st, Message: msg, Image: img, Rollback: g.rollback}
		if task != nil {
			out.failure.Task, out.failure.TaskErr = describeTask(task, hostname(task.NodeID)), taskErr(task)
			out.failedTask = task
		}
		return m, out
	}
	// The latest failure of a task that ran the image asked for (the
	// failed task may have left the up-to-date set when swarm rolled the
	// spec back), and how many of the current spec's tasks failed.
	var lastFail *swarm.Task
	nFailed := 0
	for _, set := range [][]swarm.Task{o.Tasks, o.Old} {
		for i := range set {
			t := &set[i]
			if t.Status.State != swarm.TaskStateFailed && t.Status.State != swarm.TaskStateRejected {
				continue
			}
			if g.want != "" && taskImage(t) != g.want {
				continue
			}
			if lastFail == nil || t.Status.Timestamp.After(lastFail.Status.Timestamp) {
				lastFail = t
			}
		}
	}
	for i := range o.Tasks {
		t := &o.Tasks[i]
		if (t.Status.State == swarm.TaskStateFailed || t.Status.State == swarm.TaskStateRejected) && taskImage(t) == out.want {
			nFailed++
		}
	}

	if !g.rollback {
		switch state {
		case swarm.UpdateStatePaused, swarm.UpdateStateRollbackPaused:
			return failed(string(state), lastFail)
		case swarm.UpdateStateRollbackStarted, swarm.UpdateStateRollbackCompleted:
			// keep watching until swarm finishes rolling back, so the
			// service runs the old image when the watch returns.
			m.rollingBack = true
			out.rollingBack = true
			if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
				out.want = cs.Image
			}
		}
	} else if state == swarm.UpdateStateRollbackPaused || state == swarm.UpdateStatePaused {
		return failed(string(state), lastFail)
	}

	// One row per slot (replicated) or node (global): the task with the
	// lowest desired state, then the lowest observed state (start-first
	// updates), like the docker CLI.
	byKey := map[string]*swarm.Task{}
	for i := range o.Tasks {
		t := &o.Tasks[i]
		if numbered[t.DesiredState] == 0 || numbered[t.Status.State] == 0 {
			continue
		}
		key := fmt.Sprint(t.Slot)
		if out.global {
			key = t.NodeID
		}
		if ex, ok := byKey[key]; ok {
			if numbered[ex.DesiredState] < numbered[t.DesiredState] ||
				(numbered[ex.DesiredState] == numbered[t.DesiredState] && numbered[ex.Status.State] <= numbered[t.Status.State]) {
				continue
			}
		}
		byKey[key] = t
	}
	// A task that swarm still believes runs on a down node: the node
	// never reported it stopped, whatever its desired state now.
	onDownNode := func(t *swarm.Task) bool {
		return isDown(t.NodeID) && !terminal(t.Status.State) && numbered[t.Status.State] >= numbered[swarm.TaskStateAssigned]
	}

	// A task swarm cannot place only because the task it replaces still
	// holds the port or resources (stop-first: the old one is stopping,
	// which takes up to its stop grace period) is not stuck.
	waitsForOld := func(t *swarm.Task) bool {
		for _, set := range [][]swarm.Task{o.Tasks, o.Old} {
			for i := range set {
				p := &set[i]
				same := p.Slot == t.Slot
				if out.global {
					same = p.NodeID == t.NodeID
				}
				if p.ID != t.ID && same && p.NodeID != "" && !isDown(p.NodeID) &&
					!terminal(p.Status.State) && numbered[p.Status.State] >= numbered[swarm.TaskStateAssigned] {
					return true
				}
			}
		}
		return false
	}

	switch {
	case out.global:
		// Every node that runs (or is to run) a task of the service must
		// run the new one; with an update delay the nodes not yet updated
		// have no up-to-date task at all (the docker CLI counts only those
		// and ends too early). A node whose task of any spec has not
		// confirmed that it stopped is eligible too: a node that just went
		// down gets its tasks' desired state set to shutdown at once, and
		// the node list read here may be a second older than the tasks.
		eligible := map[string]bool{}
		for _, set := range [][]swarm.Task{o.Tasks, o.Old} {
			for i := range set {
				t := &set[i]
				if t.NodeID == "" {
					continue
				}
				if _, known := nodes[t.NodeID]; !known {
					continue // removed from the swarm
				}
				// ready: a new task waits for the old one to stop
				// (stop-first) before it starts.
				unconfirmed := !terminal(t.Status.State) && numbered[t.Status.State] >= numbered[swarm.TaskStateAssigned]
				if (numbered[t.DesiredState] > 0 && !terminal(t.DesiredState)) || unconfirmed {
					eligible[t.NodeID] = true
				}
			}
		}
		for id, t := range byKey {
			if terminal(t.DesiredState) && !eligible[id] {
				delete(byKey, id)
			}
		}
		for id := range eligible {
			if _, ok := byKey[id]; !ok && isDown(id) {
				// Show the node with the task it last ran.
				for _, set := range [][]swarm.Task{o.Tasks, o.Old} {
					for i := range set {
						if t := &set[i]; t.NodeID == id && onDownNode(t) {
							byKey[id] = t
						}
					}
				}
			}
		}
		out.expected = len(eligible)
		for id := range eligible {
			if isDown(id) {
				img := ""
				if t := byKey[id]; t != nil {
					img = taskImage(t)
				}
				r := fmt.Sprintf("node %s is down", hostname(id))
				if img != "" && img != out.want {
					r += " and still runs " + shortImage(img)
				}
				out.stuck = append(out.stuck, stuck{Node: hostname(id), Reason: r})
			}
		}
	default:
		if r := svc.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
			out.expected = int(*r.Replicas)
		}
		for _, t := range byKey {
			if terminal(t.DesiredState) {
				continue
			}
			switch {
			case onDownNode(t):
				out.stuck = append(out.stuck, stuck{Slot: t.Slot, Node: hostname(t.NodeID),
					Reason: fmt.Sprintf("node %s is down", hostname(t.NodeID))})
			case unplaced(t) && !waitsForOld(t):
				r := t.Status.Err
				// Name the node the slot ran on when it went down.
				for _, set := range [][]swarm.Task{o.Tasks, o.Old} {
					for i := range set {
						if p := &set[i]; p.Slot == t.Slot && onDownNode(p) {
							r = fmt.Sprintf("its task on %s (down) cannot be rescheduled: %s", hostname(p.NodeID), t.Status.Err)
						}
					}
				}
				out.stuck = append(out.stuck, stuck{Slot: t.Slot, Reason: "swarm cannot place it: " + r})
			}
		}
	}
	if out.global {
		for _, t := range byKey {
			if unplaced(t) && !waitsForOld(t) {
				out.stuck = append(out.stuck, stuck{Node: hostname(t.NodeID), Reason: "swarm cannot place a task: " + t.Status.Err})
			}
		}
	}
	sort.Slice(out.stuck, func(i, j int) bool { return out.stuck[i].String() < out.stuck[j].String() })

	for _, t := range byKey {
		rw := row{Slot: t.Slot, NodeID: t.NodeID, State: t.Status.State, Desired: t.DesiredState,
			Image: taskImage(t), Err: t.Status.Err, NodeDown: isDown(t.NodeID), Since: t.Status.Timestamp}
		if t.NodeID != "" {
			rw.Node = hostname(t.NodeID)
		}
		if !out.global && terminal(t.DesiredState) {
			continue
		}
		out.rows = append(out.rows, rw)
		if rw.Image == out.want && !terminal(t.DesiredState) && t.Status.State == swarm.TaskStateRunning && !rw.NodeDown {
			out.running++
			if t.Status.Timestamp.After(out.lastRunning) {
				out.lastRunning = t.Status.Timestamp
			}
		}
	}
	sort.Slice(out.rows, func(i, j int) bool {
		a, b := out.rows[i], out.rows[j]
		if a.Slot != b.Slot {
			return a.Slot < b.Slot
		}
		return a.Node < b.Node
	})

	// Stuck slots and nodes: fail once they stay so for stuckGrace.
	if len(out.stuck) == 0 {
		m.stuckSince = time.Time{}
	} else if m.stuckSince.IsZero() {
		m.stuckSince = o.Now
	}
	grace := stuckGrace
	if len(out.stuck) > 0 && onlyPortWaits(out.stuck) {
		grace = portGrace
	}
	if len(out.stuck) > 0 && o.Now.Sub(m.stuckSince) >= grace {
		st := "node down"
		for _, s := range out.stuck {
			if !strings.Contains(s.Reason, " is down") {
				st = "cannot place"
			}
		}
		var reasons []string
		for _, s := range out.stuck {
			reasons = append(reasons, s.String())
		}
		m2, o2 := failed(st, nil)
		o2.failure.Message = strings.Join(reasons, "; ")
		if msg != "" {
			o2.failure.Message += " (swarm: " + strings.ReplaceAll(string(state), "_", " ") + ")"
		}
		return m2, o2
	}

	converged := out.expected > 0 && out.running == out.expected && len(out.stuck) == 0
	if m.rollingBack && converged && state == swarm.UpdateStateRollbackCompleted {
		// rolled back and running the old image again: the update failed.
		return failed(string(state), lastFail)
	}
	if !converged {
		m.convergedAt = time.Time{}
	} else if m.convergedAt.IsZero() {
		m.convergedAt = o.Now
	}
	if converged && !m.rollingBack {
		out.monitor = 5 * time.Second
		cfg := svc.Spec.UpdateConfig
		if g.rollback {
			cfg = svc.Spec.RollbackConfig
		}
		if cfg != nil && cfg.Monitor > 0 {
			out.monitor = cfg.Monitor
		}
		// Done when swarm says so, or (like the docker CLI) when every
		// task has stayed running for the update monitor period, the
		// window in which swarm would still act on a failure.
		stable := o.Now.Sub(m.convergedAt) >= out.monitor
		done := false
		switch {
		case g.rollback:
			done = state == swarm.UpdateStateRollbackCompleted || (state == swarm.UpdateStateRollbackStarted && stable)
		case us == nil, state == swarm.UpdateStateCompleted:
			done = true
		case state == swarm.UpdateStateUpdating:
			done = stable
		}
		out.phase = phaseVerifying
		if done {
			out.phase = phaseConverged
		}
		return m, out
	}
	// Without an update in flight (a new service, or failure action
	// "continue"), swarm never gives up: stop when tasks keep failing.
	if (us == nil || state == swarm.UpdateStateCompleted) && !converged && nFailed >= max(3, 2*out.expected) {
		return failed("failing", lastFail)
	}
	return m, out
}

// onlyPortWaits reports whether every stuck slot or node waits only for a
// host-mode port, with no node down.
func onlyPortWaits(stuck []stuck) bool {
	for _, s := range stuck {
		if !strings.Contains(s.Reason, "port already in use") || strings.Contains(s.Reason, "down") {
			return false
		}
	}
	return true
}

// unplaced reports whether swarm's scheduler found no node for t
// ("no suitable node (scheduling constraints not satisfied on 3 nodes)").
func unplaced(t *swarm.Task) bool {
	return t.Status.State == swarm.TaskStatePending && strings.Contains(t.Status.Err, "no suitable node")
}

func sameStatus(a, b *swarm.UpdateStatus) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.State == b.State && a.Message == b.Message &&
		((a.StartedAt == nil) == (b.StartedAt == nil)) && (a.StartedAt == nil || a.StartedAt.Equal(*b.StartedAt))
}
