package deploy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

func zoned(id, host, zone string) swarm.Node {
	n := node(id, host, swarm.NodeStateReady)
	n.Spec.Labels = map[string]string{"zone": zone}
	return n
}

// TestPrepullPaced: the job labreg creates for each parallelism (a
// replicated job paced by swarm, or a global job when every node may pull
// at once), and the pull times and summary it reports from the tasks swarm
// hands out poll after poll.
func TestPrepullPaced(t *testing.T) {
	nodes := []swarm.Node{zoned("n1", "worker1", "a"), zoned("n2", "worker2", "a"), zoned("n3", "worker3", "b"),
		node("n4", "worker4", swarm.NodeStateDown)}
	prep := func(id, n string) swarm.Task {
		return task(id, 0, n, swarm.TaskStatePreparing, swarm.TaskStateComplete, imgNew, "")
	}
	// past preparing: the entrypoint does not exist, the image is there
	pulled := func(id, n string) swarm.Task {
		return task(id, 0, n, swarm.TaskStateFailed, swarm.TaskStateComplete, imgNew, "starting container failed: no such file")
	}
	pullErr := func(id, n string) swarm.Task {
		return task(id, 0, n, swarm.TaskStateRejected, swarm.TaskStateComplete, imgNew, "No such image: "+imgNew)
	}
	tests := []struct {
		name        string
		parallelism int
		constraints []string
		polls       [][]swarm.Task // the task list at each poll; the last repeats
		timeout     time.Duration

		global           bool
		maxConc, total   uint64
		pulled           []string // nodes with a pull time, in order
		summary, errLike string
		noJob            bool
	}{
		{
			name: "two at a time over three nodes; a second task on a node that pulled is not waited for", parallelism: 2,
			polls: [][]swarm.Task{
				{{ID: "x", Status: swarm.TaskStatus{State: swarm.TaskStatePending}}, prep("a", "n1"), prep("b", "n2")},
				{pulled("a", "n1"), pulled("b", "n2"), prep("c", "n1")},
				{pulled("a", "n1"), pulled("b", "n2"), prep("c", "n1"), prep("d", "n3")},
				{pulled("a", "n1"), pulled("b", "n2"), prep("c", "n1"), pulled("d", "n3")},
			},
			maxConc: 2, total: 3, pulled: []string{"worker1", "worker2", "worker3"},
			summary: "3 node(s) pulled in ",
		},
		{
			name: "constraints count the nodes: zone a is two nodes", parallelism: 1, constraints: []string{"node.labels.zone==a"},
			polls: [][]swarm.Task{
				{prep("a", "n1")},
				{pulled("a", "n1"), prep("b", "n2")},
				{pulled("a", "n1"), pulled("b", "n2")},
			},
			maxConc: 1, total: 2, pulled: []string{"worker1", "worker2"}, summary: "2 node(s) pulled in ",
		},
		{
			name: "0 is all at once: a global job", parallelism: 0,
			polls:  [][]swarm.Task{{pulled("a", "n1"), pulled("b", "n2"), pulled("c", "n3")}},
			global: true, pulled: []string{"worker1", "worker2", "worker3"}, summary: "3 node(s) pulled in ",
		},
		{
			name: "more than the nodes is all at once", parallelism: 50, constraints: []string{"node.labels.zone!=b"},
			polls:  [][]swarm.Task{{pulled("a", "n1"), pulled("b", "n2")}},
			global: true, pulled: []string{"worker1", "worker2"}, summary: "2 node(s) pulled in ",
		},
		{
			name: "a node that cannot pull fails the prepull, naming it", parallelism: 1,
			polls: [][]swarm.Task{
				{pullErr("a", "n1")},
				{pullErr("a", "n1"), pulled("b", "n2")},
				{pullErr("a", "n1"), pulled("b", "n2"), pulled("c", "n3")},
			},
			maxConc: 1, total: 3, pulled: []string{"worker1", "worker2", "worker3"},
			summary: "2 node(s) pulled in ", errLike: "1 node(s) could not pull: worker1: No such image",
		},
		{
			name: "timeout names the nodes still waiting for their turn", parallelism: 1, timeout: 200 * time.Millisecond,
			polls:   [][]swarm.Task{{prep("a", "n1")}},
			maxConc: 1, total: 3,
			errLike: "not pulled yet on worker1 (preparing), worker2 (waiting for its turn), worker3 (waiting for its turn)",
		},
		{
			name: "a constraint labreg cannot count is an error before any job", parallelism: 2, constraints: []string{"node.ip==10.0.0.1"},
			noJob: true, errLike: "cannot count the nodes key node.ip selects",
		},
		{
			name: "negative parallelism is an error", parallelism: -1, noJob: true, errLike: "prepull parallelism -1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var spec *swarm.ServiceSpec
			poll := 0
			e := &fakeEngine{
				nodeList: func() ([]swarm.Node, error) { return nodes, nil },
				serviceCreate: func(o client.ServiceCreateOptions) (string, error) {
					spec = &o.Spec
					return "job1", nil
				},
				serviceRemove: func(string) error { return nil },
				taskList: func(context.Context, client.Filters) ([]swarm.Task, error) {
					tl := tc.polls[min(poll, len(tc.polls)-1)]
					poll++
					return tl, nil
				},
			}
			var events []Progress
			ctx := t.Context()
			if tc.timeout > 0 {
				c, cancel := context.WithTimeout(ctx, tc.timeout)
				defer cancel()
				ctx = c
			}
			pts, err := fakeClient(e, &events).Prepull(ctx, "web", imgNew, &swarm.Placement{Constraints: tc.constraints}, "", tc.parallelism)
			if tc.errLike == "" && err != nil {
				t.Fatalf("Prepull: %v", err)
			}
			if tc.errLike != "" && (err == nil || !strings.Contains(err.Error(), tc.errLike)) {
				t.Fatalf("err = %v, want one saying %q", err, tc.errLike)
			}
			if tc.noJob {
				if spec != nil {
					t.Errorf("a job %s was created", spec.Name)
				}
				return
			}
			if spec == nil {
				t.Fatal("no job created")
			}
			if tc.global {
				if spec.Mode.GlobalJob == nil {
					t.Errorf("mode %+v, want a global job", spec.Mode)
				}
			} else {
				rj := spec.Mode.ReplicatedJob
				if rj == nil || rj.MaxConcurrent == nil || rj.TotalCompletions == nil {
					t.Fatalf("mode %+v, want a replicated job", spec.Mode)
				}
				if *rj.MaxConcurrent != tc.maxConc || *rj.TotalCompletions != tc.total {
					t.Errorf("MaxConcurrent %d, TotalCompletions %d; want %d, %d", *rj.MaxConcurrent, *rj.TotalCompletions, tc.maxConc, tc.total)
				}
				if rp := spec.TaskTemplate.RestartPolicy; rp == nil || rp.Condition != swarm.RestartPolicyConditionOnFailure || rp.Delay == nil || *rp.Delay != 0 {
					t.Errorf("restart policy %+v, want on-failure at once (else swarm never hands out the next node's turn)", rp)
				}
				if pl := spec.TaskTemplate.Placement; pl == nil || pl.MaxReplicas != 1 || strings.Join(pl.Constraints, ",") != strings.Join(tc.constraints, ",") {
					t.Errorf("placement %+v, want MaxReplicas 1 and constraints %v", pl, tc.constraints)
				}
			}
			var got []string
			for _, pt := range pts {
				got = append(got, pt.Node)
			}
			if strings.Join(got, ",") != strings.Join(tc.pulled, ",") {
				t.Errorf("pull times for %v, want %v", got, tc.pulled)
			}
			var summary string
			for _, ev := range events {
				if strings.Contains(ev.Message, "node(s) pulled in") {
					summary = ev.Message
				}
			}
			if tc.summary == "" && summary != "" || !strings.HasPrefix(summary, tc.summary) ||
				tc.summary != "" && (!strings.Contains(summary, "p50 ") || !strings.Contains(summary, "p99 ") || !strings.Contains(summary, "slowest worker")) {
				t.Errorf("summary %q, want one starting %q with p50, p99 and the slowest node", summary, tc.summary)
			}
		})
	}
}

func TestPullSummary(t *testing.T) {
	var pts []PullTime
	for i := 1; i <= 100; i++ {
		pts = append(pts, PullTime{Node: "n" + strings.Repeat("x", i%3), Took: time.Duration(i) * time.Second})
	}
	pts[99].Node = "slow"
	pts = append(pts, PullTime{Node: "bad", Took: time.Hour, Err: "no such image"})
	got := pullSummary(pts, 101*time.Second)
	want := "100 node(s) pulled in 1m41s: p50 50s, p99 1m39s, slowest slow (1m40s)"
	if got != want {
		t.Errorf("pullSummary = %q, want %q", got, want)
	}
	if s := pullSummary([]PullTime{{Node: "bad", Err: "x"}}, time.Second); s != "" {
		t.Errorf("pullSummary of failures only = %q, want none", s)
	}
}
