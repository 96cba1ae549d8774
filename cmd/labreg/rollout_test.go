package main

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/labreg/labreg/deploy"
)

const pinned = "reg:5000/web:green@sha256:a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2"

// TestPrintProgress: one line per event, tasks named by swarm's slot
// number (as errors name them) or by node.
func TestPrintProgress(t *testing.T) {
	events := []deploy.Progress{
		{Service: "web", Stage: deploy.StageImage, Image: pinned},
		{Service: "web", Stage: deploy.StagePrepull, Image: pinned, Message: "every eligible node pulls reg:5000/web:green@sha256:a2a2a2a2a2a2"},
		{Service: "web", Stage: deploy.StagePrepull, Node: "worker1", Took: 1234567 * time.Microsecond},
		{Service: "web", Stage: deploy.StagePrepull, Node: "worker2", Err: "No such image: reg:5000/web:green"},
		{Service: "web", Stage: deploy.StageTask, Slot: 3, Node: "worker1", State: "running", Image: pinned},
		{Service: "web", Stage: deploy.StageTask, Slot: 2, State: "pending", Image: pinned, Err: "no suitable node (host-mode port already in use on 2 nodes)"},
		{Service: "web", Stage: deploy.StageStuck, Slot: 2, Message: "swarm cannot place it: no suitable node"},
		{Service: "g", Stage: deploy.StageTask, Node: "worker3", State: "running", Image: pinned, Message: "node down"},
		{Service: "g", Stage: deploy.StageStuck, Node: "worker3", Message: "node worker3 is down"},
		{Service: "web", Stage: deploy.StageOverall, Running: 1, Total: 2},
		{Service: "web", Stage: deploy.StageOverall, Running: 1, Total: 2, Rollback: true},
		{Service: "web", Stage: deploy.StageVerify, Running: 2, Image: pinned, Took: 5 * time.Second},
		{Service: "web", Stage: deploy.StageConverged, Running: 2, Total: 2, Image: pinned},
	}
	want := `web: image ` + pinned + `
web prepull: every eligible node pulls reg:5000/web:green@sha256:a2a2a2a2a2a2
web prepull: worker1 pulled in 1.235s
web prepull: worker2: No such image: reg:5000/web:green
web slot 3: running   sha256:a2a2a2a2a2a2 on worker1
web slot 2: pending   sha256:a2a2a2a2a2a2 no suitable node (host-mode port already in use on 2 nodes)
web slot 2: swarm cannot place it: no suitable node
g worker3: running   sha256:a2a2a2a2a2a2 (node down)
g: node worker3 is down
web overall progress: 1 out of 2 tasks
web overall progress: rolling back: 1 out of 2 tasks
web verify: all 2 tasks run reg:5000/web:green@sha256:a2a2a2a2a2a2; waiting 5s to verify that they are stable
web verify: Service web converged: 2/2 tasks run reg:5000/web:green@sha256:a2a2a2a2a2a2
`
	var b bytes.Buffer
	p := printProgress(&b)
	for _, e := range events {
		p(e)
	}
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestRolloutExitCodes: every rollout that did not converge exits 3, a
// service that does not exist 1.
func TestRolloutExitCodes(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{&deploy.RolloutError{Service: "web", State: "node down"}, exitRollout},
		{&deploy.RolloutError{Service: "web", State: "prepull failed"}, exitRollout},
		{&deploy.RolloutError{Service: "web", State: "rollback_paused", Rollback: true}, exitRollout},
		{fmt.Errorf("deploying: %w", &deploy.RolloutError{State: "timeout"}), exitRollout},
		{&deploy.ServiceNotFoundError{Name: "g"}, exitError},
		{errors.New("engine unreachable"), exitError},
	}
	for _, tc := range tests {
		if got := exitCode(rolloutErr(tc.err)); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.err, got, tc.want)
		}
	}
}
