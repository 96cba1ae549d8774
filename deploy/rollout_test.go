package deploy

import (
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// The rollout states, decided without a swarm from what one poll sees.

const (
	imgOld = "reg:5000/web:blue@sha256:00000000000000000000000000000000000000000000000000000000000000b1"
	imgNew = "reg:5000/web:green@sha256:00000000000000000000000000000000000000000000000000000000000000a2"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func node(id, host string, state swarm.NodeState) swarm.Node {
	return swarm.Node{ID: id, Description: swarm.NodeDescription{Hostname: host}, Status: swarm.NodeStatus{State: state},
		Spec: swarm.NodeSpec{Availability: swarm.NodeAvailabilityActive}}
}

// threeWorkers: w1 and w2 ready, w3 down.
var threeWorkers = []swarm.Node{
	node("n1", "worker1", swarm.NodeStateReady),
	node("n2", "worker2", swarm.NodeStateReady),
	node("n3", "worker3", swarm.NodeStateDown),
}

func task(id string, slot int, nodeID string, state, desired swarm.TaskState, image, err string) swarm.Task {
	return swarm.Task{ID: id, Slot: slot, NodeID: nodeID, DesiredState: desired,
		Spec:   swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
		Status: swarm.TaskStatus{State: state, Err: err, Timestamp: t0}}
}

func running(id string, slot int, nodeID, image string) swarm.Task {
	return task(id, slot, nodeID, swarm.TaskStateRunning, swarm.TaskStateRunning, image, "")
}

func replicated(n uint64, image string, us *swarm.UpdateStatus) swarm.Service {
	return swarm.Service{ID: "svc1", Spec: swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: "web"},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &n}},
		UpdateConfig: &swarm.UpdateConfig{Monitor: 2 * time.Second},
	}, UpdateStatus: us}
}

func global(image string, us *swarm.UpdateStatus) swarm.Service {
	s := replicated(0, image, us)
	s.Spec.Mode = swarm.ServiceMode{Global: &swarm.GlobalService{}}
	return s
}

func update(state swarm.UpdateState, msg string) *swarm.UpdateStatus {
	return &swarm.UpdateStatus{State: state, Message: msg, StartedAt: &t0}
}

func TestDecide(t *testing.T) {
	old := update(swarm.UpdateStateCompleted, "update completed") // status before the request
	old.StartedAt = ptrTime(t0.Add(-time.Hour))
	deployNew := goal{want: imgNew, before: old}
	created := goal{want: imgNew, created: true}
	tests := []struct {
		name string
		goal goal
		mem  memory
		obs  observation
		// want
		phase    phase
		state    string   // RolloutError.State when failed
		says     []string // in the error (failed) or the stuck reasons
		running  int
		expected int
	}{
		{
			name: "new service converged",
			goal: created,
			obs: observation{Service: replicated(2, imgNew, nil), Nodes: threeWorkers[:2], Tasks: []swarm.Task{
				running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew)}},
			phase: phaseConverged, running: 2, expected: 2,
		},
		{
			name: "update completed",
			goal: deployNew,
			obs: observation{Service: replicated(2, imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew)}},
			phase: phaseConverged, running: 2, expected: 2,
		},
		{
			name: "updating, all running, monitor not over: verifying",
			goal: deployNew,
			mem:  memory{convergedAt: t0.Add(-time.Second)},
			obs: observation{Service: replicated(2, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew)}},
			phase: phaseVerifying, running: 2, expected: 2,
		},
		{
			name: "updating, all running for the monitor period: converged",
			goal: deployNew,
			mem:  memory{convergedAt: t0.Add(-2 * time.Second)},
			obs: observation{Service: replicated(2, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew)}},
			phase: phaseConverged, running: 2, expected: 2,
		},
		{
			name: "updating, one slot still starting",
			goal: deployNew,
			obs: observation{Service: replicated(2, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew),
					task("b", 2, "n2", swarm.TaskStateStarting, swarm.TaskStateRunning, imgNew, "")}},
			phase: phaseWaiting, running: 1, expected: 2,
		},
		{
			name: "stale update status from an earlier update is ignored",
			goal: deployNew,
			obs: observation{Service: replicated(1, imgNew, old), Nodes: threeWorkers[:1],
				Tasks: []swarm.Task{task("a", 1, "n1", swarm.TaskStatePreparing, swarm.TaskStateRunning, imgNew, "")}},
			phase: phaseWaiting, running: 0, expected: 1,
		},
		{
			name: "paused, task rejected: names slot, node and the error",
			goal: deployNew,
			obs: observation{Service: replicated(2, imgNew, update(swarm.UpdateStatePaused, "update paused due to failure or early termination of task x")),
				Nodes: threeWorkers[:2], Tasks: []swarm.Task{running("a", 1, "n1", imgOld),
					task("rejected1", 2, "n2", swarm.TaskStateRejected, swarm.TaskStateShutdown, imgNew, "No such image: reg:5000/web:green@sha256:00")}},
			phase: phaseFailed, state: "paused", says: []string{"update paused", "slot 2 on worker2", "rejected", "No such image"},
		},
		{
			name: "rollback started: watching the old image come back",
			goal: deployNew,
			obs: observation{Service: replicated(1, imgOld, update(swarm.UpdateStateRollbackStarted, "update rolled back due to failure")),
				Nodes: threeWorkers[:1], Tasks: []swarm.Task{task("b", 1, "n1", swarm.TaskStateStarting, swarm.TaskStateRunning, imgOld, "")},
				Old: []swarm.Task{task("c", 1, "n1", swarm.TaskStateFailed, swarm.TaskStateShutdown, imgNew, "task: non-zero exit (1)")}},
			phase: phaseWaiting, running: 0, expected: 1,
		},
		{
			name: "rollback completed: the update failed, with the task's error",
			goal: deployNew,
			mem:  memory{rollingBack: true},
			obs: observation{Service: replicated(1, imgOld, update(swarm.UpdateStateRollbackCompleted, "rollback completed")),
				Nodes: threeWorkers[:1], Tasks: []swarm.Task{running("b", 1, "n1", imgOld)},
				Old: []swarm.Task{task("crash1", 1, "n1", swarm.TaskStateFailed, swarm.TaskStateShutdown, imgNew, "task: non-zero exit (1)")}},
			phase: phaseFailed, state: "rollback_completed", says: []string{"rollback completed", "for " + imgNew, "non-zero exit (1)", "slot 1 on worker1"},
		},
		{
			name: "rollback paused",
			goal: deployNew,
			obs: observation{Service: replicated(1, imgOld, update(swarm.UpdateStateRollbackPaused, "rollback paused")),
				Nodes: threeWorkers[:1], Tasks: []swarm.Task{running("b", 1, "n1", imgOld)}},
			phase: phaseFailed, state: "rollback_paused", says: []string{"rollback paused"},
		},
		{
			name: "requested rollback completed",
			goal: goal{rollback: true, before: old},
			obs: observation{Service: replicated(1, imgOld, update(swarm.UpdateStateRollbackCompleted, "rollback completed")),
				Nodes: threeWorkers[:1], Tasks: []swarm.Task{running("b", 1, "n1", imgOld)}},
			phase: phaseConverged, running: 1, expected: 1,
		},
		{
			name: "requested rollback paused is a rollback failure",
			goal: goal{rollback: true, before: old},
			obs: observation{Service: replicated(1, imgOld, update(swarm.UpdateStateRollbackPaused, "rollback paused")),
				Nodes: threeWorkers[:1], Tasks: []swarm.Task{running("b", 1, "n1", imgNew)}},
			phase: phaseFailed, state: "rollback_paused", says: []string{"rollback failed"},
		},
		{
			name: "node down, task not rescheduled yet: stuck, still waiting",
			goal: deployNew,
			obs: observation{Now: t0, Service: replicated(3, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew), running("c", 3, "n3", imgNew)}},
			phase: phaseWaiting, says: []string{"slot 3: node worker3 is down"}, running: 2, expected: 3,
		},
		{
			name: "node down for longer than the grace: fails naming the node",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-stuckGrace)},
			obs: observation{Now: t0, Service: replicated(3, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew), running("c", 3, "n3", imgNew)}},
			phase: phaseFailed, state: "node down", says: []string{"slot 3: node worker3 is down"},
		},
		{
			name: "node down, swarm says completed, replacement cannot be placed: swarm's reason and the node",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-stuckGrace)},
			obs: observation{Now: t0, Service: replicated(3, imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew),
					task("c", 3, "n3", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgNew, ""),
					task("d", 3, "", swarm.TaskStatePending, swarm.TaskStateRunning, imgNew, "no suitable node (host-mode port already in use on 2 nodes)")}},
			phase: phaseFailed, state: "cannot place", says: []string{"slot 3", "worker3 (down)", "no suitable node (host-mode port already in use on 2 nodes)"},
		},
		{
			name: "node down, swarm says completed, task rescheduled on a live node: converged",
			goal: deployNew,
			obs: observation{Now: t0, Service: replicated(3, imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew), running("b", 2, "n2", imgNew),
					task("c", 3, "n3", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgNew, ""),
					running("d", 3, "n1", imgNew)}},
			phase: phaseConverged, running: 3, expected: 3,
		},
		{
			name: "host port held by another task, no node down: waits past stuckGrace",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-stuckGrace)},
			obs: observation{Now: t0, Service: replicated(2, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew),
					task("b", 2, "", swarm.TaskStatePending, swarm.TaskStateRunning, imgNew, "no suitable node (host-mode port already in use on 1 node)")}},
			phase: phaseWaiting, says: []string{"slot 2", "host-mode port already in use"}, running: 1, expected: 2,
		},
		{
			name: "host port held for longer than portGrace: fails with swarm's reason",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-portGrace)},
			obs: observation{Now: t0, Service: replicated(2, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew),
					task("b", 2, "", swarm.TaskStatePending, swarm.TaskStateRunning, imgNew, "no suitable node (host-mode port already in use on 1 node)")}},
			phase: phaseFailed, state: "cannot place", says: []string{"slot 2: swarm cannot place it: no suitable node (host-mode port already in use on 1 node)"},
		},
		{
			name: "new spec never scheduled: no suitable node",
			goal: created,
			mem:  memory{stuckSince: t0.Add(-stuckGrace)},
			obs: observation{Now: t0, Service: replicated(2, imgNew, nil), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 1, "n1", imgNew),
					task("b", 2, "", swarm.TaskStatePending, swarm.TaskStateRunning, imgNew, "no suitable node (scheduling constraints not satisfied on 2 nodes)")}},
			phase: phaseFailed, state: "cannot place", says: []string{"slot 2: swarm cannot place it: no suitable node (scheduling constraints not satisfied on 2 nodes)"},
		},
		{
			name: "stop-first: the new task waits for the old one to free the host port: not stuck",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-time.Minute)},
			obs: observation{Now: t0, Service: replicated(1, imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:1],
				Tasks: []swarm.Task{task("new", 1, "", swarm.TaskStatePending, swarm.TaskStateReady, imgNew, "no suitable node (host-mode port already in use on 1 node)")},
				Old:   []swarm.Task{task("old", 1, "n1", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, "")}},
			phase: phaseWaiting, running: 0, expected: 1,
		},
		{
			name: "new service, tasks keep failing",
			goal: created,
			obs: observation{Service: replicated(1, imgNew, nil), Nodes: threeWorkers[:1], Tasks: []swarm.Task{
				task("f1", 1, "n1", swarm.TaskStateRejected, swarm.TaskStateShutdown, imgNew, "No such image: x"),
				task("f2", 1, "n1", swarm.TaskStateRejected, swarm.TaskStateShutdown, imgNew, "No such image: x"),
				task("f3", 1, "n1", swarm.TaskStateRejected, swarm.TaskStateShutdown, imgNew, "No such image: x"),
				task("f4", 1, "n1", swarm.TaskStatePreparing, swarm.TaskStateRunning, imgNew, "")}},
			phase: phaseFailed, state: "failing", says: []string{"No such image", "slot 1 on worker1"},
		},
		{
			name: "global: node down still running the old image: never converged",
			goal: deployNew,
			mem:  memory{convergedAt: t0.Add(-time.Minute)},
			obs: observation{Now: t0, Service: global(imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 0, "n1", imgNew), running("b", 0, "n2", imgNew)},
				Old:   []swarm.Task{task("c", 0, "n3", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, "")}},
			phase: phaseWaiting, says: []string{"node worker3 is down and still runs reg:5000/web:blue@sha256:000000000000"}, running: 2, expected: 3,
		},
		{
			name: "global: node down for longer than the grace: fails naming it",
			goal: deployNew,
			mem:  memory{stuckSince: t0.Add(-stuckGrace)},
			obs: observation{Now: t0, Service: global(imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: threeWorkers,
				Tasks: []swarm.Task{running("a", 0, "n1", imgNew), running("b", 0, "n2", imgNew)},
				Old:   []swarm.Task{task("c", 0, "n3", swarm.TaskStateRunning, swarm.TaskStateRunning, imgOld, "")}},
			phase: phaseFailed, state: "node down", says: []string{"node worker3 is down"},
		},
		{
			name: "global with an update delay: a node not updated yet counts",
			goal: deployNew,
			obs: observation{Service: global(imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 0, "n1", imgNew)},
				Old:   []swarm.Task{running("b", 0, "n2", imgOld)}},
			phase: phaseWaiting, running: 1, expected: 2,
		},
		{
			name: "global, stop-first: the new task waits (desired ready) for the old to stop: its node counts",
			goal: deployNew,
			obs: observation{Service: global(imgNew, update(swarm.UpdateStateUpdating, "updating")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{task("a2", 0, "n1", swarm.TaskStatePending, swarm.TaskStateReady, imgNew, "")},
				Old: []swarm.Task{task("a1", 0, "n1", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, ""),
					running("b", 0, "n2", imgOld)}},
			phase: phaseWaiting, running: 0, expected: 2,
		},
		{
			name: "global: a node that left the swarm is not waited for",
			goal: deployNew,
			obs: observation{Service: global(imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: threeWorkers[:2],
				Tasks: []swarm.Task{running("a", 0, "n1", imgNew), running("b", 0, "n2", imgNew)},
				Old:   []swarm.Task{task("c", 0, "gone", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, "")}},
			phase: phaseConverged, running: 2, expected: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.obs.Now.IsZero() {
				tc.obs.Now = t0
			}
			_, out := decide(tc.goal, tc.mem, tc.obs)
			if out.phase != tc.phase {
				t.Fatalf("phase %v, want %v (stuck %v, %d/%d, failure %v)", out.phase, tc.phase, out.stuck, out.running, out.expected, out.failure)
			}
			var text string
			if out.phase == phaseFailed {
				if out.failure.State != tc.state {
					t.Errorf("state %q, want %q", out.failure.State, tc.state)
				}
				text = out.failure.Error()
			} else {
				if out.running != tc.running || out.expected != tc.expected {
					t.Errorf("%d/%d tasks, want %d/%d", out.running, out.expected, tc.running, tc.expected)
				}
				for _, s := range out.stuck {
					text += s.String() + "\n"
				}
			}
			for _, w := range tc.says {
				if !strings.Contains(text, w) {
					t.Errorf("does not say %q:\n%s", w, text)
				}
			}
			if out.phase == phaseConverged && strings.Contains(text, "down") {
				t.Errorf("converged with a node down")
			}
		})
	}
}

// TestDecideGlobalNodeDownSequence follows a global update poll by poll
// while worker3 goes down: it is never converged, and fails stuckGrace
// after the node was first seen down, naming it.
func TestDecideGlobalNodeDownSequence(t *testing.T) {
	g := goal{want: imgNew, created: false, before: nil}
	nodesUp := []swarm.Node{node("n1", "worker1", swarm.NodeStateReady), node("n2", "worker2", swarm.NodeStateReady), node("n3", "worker3", swarm.NodeStateReady)}
	svc := global(imgNew, update(swarm.UpdateStateUpdating, "updating"))
	var m memory
	step := func(now time.Time, nodes []swarm.Node, tasks, old []swarm.Task) outcome {
		var out outcome
		m, out = decide(g, m, observation{Service: svc, Nodes: nodes, Tasks: tasks, Old: old, Now: now})
		return out
	}
	out := step(t0, nodesUp, []swarm.Task{running("a", 0, "n1", imgNew)},
		[]swarm.Task{running("b", 0, "n2", imgOld), running("c", 0, "n3", imgOld)})
	if out.phase != phaseWaiting || out.running != 1 || out.expected != 3 {
		t.Fatalf("first poll: phase %v %d/%d, want waiting 1/3", out.phase, out.running, out.expected)
	}
	// worker2 updated; worker3 goes down; swarm shuts its task down in
	// the store (the node never confirms).
	c := task("c", 0, "n3", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, "")
	for i, dt := range []time.Duration{time.Second, 5 * time.Second, stuckGrace} {
		out = step(t0.Add(dt), threeWorkers, []swarm.Task{running("a", 0, "n1", imgNew), running("b2", 0, "n2", imgNew)}, []swarm.Task{c})
		if out.phase == phaseConverged || out.phase == phaseVerifying {
			t.Fatalf("poll %d: %v with worker3 down", i, out.phase)
		}
	}
	if out.phase != phaseWaiting {
		t.Fatalf("phase %v %v, want still waiting stuckGrace after the first poll that saw worker3 down", out.phase, out.failure)
	}
	out = step(t0.Add(time.Second+stuckGrace), threeWorkers, []swarm.Task{running("a", 0, "n1", imgNew), running("b2", 0, "n2", imgNew)}, []swarm.Task{c})
	if out.phase != phaseFailed || !strings.Contains(out.failure.Error(), "worker3 is down") {
		t.Fatalf("after the grace: phase %v, error %v; want failed naming worker3", out.phase, out.failure)
	}
}

func ptrTime(t time.Time) *time.Time { return &t }

// TestDecideGlobalNodeJustDown: swarm set the desired state of the down
// node's task to shutdown, but the node list (read once a second) still
// says ready: the node still counts, the service is not converged.
func TestDecideGlobalNodeJustDown(t *testing.T) {
	up := []swarm.Node{node("n1", "worker1", swarm.NodeStateReady), node("n2", "worker2", swarm.NodeStateReady)}
	_, out := decide(goal{want: imgNew}, memory{convergedAt: t0.Add(-time.Minute)}, observation{Now: t0,
		Service: global(imgNew, update(swarm.UpdateStateCompleted, "update completed")), Nodes: up,
		Tasks: []swarm.Task{running("a", 0, "n1", imgNew)},
		Old:   []swarm.Task{task("b", 0, "n2", swarm.TaskStateRunning, swarm.TaskStateShutdown, imgOld, "")}})
	if out.phase == phaseConverged || out.phase == phaseVerifying || out.expected != 2 {
		t.Errorf("phase %v, %d/%d tasks: want waiting on 2 nodes", out.phase, out.running, out.expected)
	}
}
