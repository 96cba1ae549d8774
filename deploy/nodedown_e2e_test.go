package deploy_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestWorkerDownMidUpdate stops a worker's dockerd in the middle of a
// rolling update (after the first node runs the new image, during the
// update delay), for a replicated service with one task per worker (host
// port) and for a global one. labreg must name the node that went down and
// exit with status 3 well before its timeout; it must never call the global
// service converged (it once printed "converged: 2/2" and exited 0 while
// the down node still ran the old image, and the replicated rollout waited
// out its timeout without naming the node). A replicated service without
// a host port converges: swarm reschedules the lost task on the other
// worker, and labreg exits 0 once both run the new image there.
//
// Every step waits on a state (the new image running on one worker, the
// labreg process ending), not on a sleep.
func TestWorkerDownMidUpdate(t *testing.T) {
	docker := testenv.Swarm(t)
	bin := testenv.BuildLabreg(t)
	port, _ := testenv.WorkerRegistry(t, registry.Options{})
	local := "127.0.0.1:" + port
	for _, mode := range []string{"replicated", "global", "rescheduled"} {
		t.Run(mode, func(t *testing.T) {
			w1 := testenv.Worker(t, "down1")
			w2 := testenv.Worker(t, "down2")
			workers := []*testenv.Node{w1, w2}
			adv := w1.HostIP + ":" + port // every worker routes to the host's addresses
			id := suffix(t)
			for _, w := range workers {
				if out, err := exec.Command(docker, "node", "update", "--label-add", "labreg.test="+id, w.ID).CombinedOutput(); err != nil {
					t.Fatalf("labelling %s: %v: %s", w.Name, err, out)
				}
			}
			ref := func(tag string) string {
				d := pageImage(t, local+"/down:"+tag+"-"+id, nil, tag+" "+id+"\n")
				return adv + "/down:" + tag + "-" + id + "@" + d
			}
			blue, green := ref("blue"), ref("green")
			svc := "down-" + mode + "-" + id
			removeService(t, docker, svc)
			env := []string{"DOCKER_CONFIG=" + dockerConfig(t, adv, "", "")}
			// One task per worker (host port), one node at a time, and a
			// long delay between them: the crash comes in the delay.
			common := []string{"--advertise", adv, "--progress", "plain", "--constraint", "node.labels.labreg.test==" + id,
				"--update-parallelism", "1", "--update-delay", "10m", "--update-monitor", "1s", "--timeout", "5m"}
			switch mode {
			case "global":
				common = append(common, "--mode", "global", "--publish", fmt.Sprintf("mode=host,%d:80", freePort(t)))
			case "replicated":
				common = append(common, "--replicas", "2", "--publish", fmt.Sprintf("mode=host,%d:80", freePort(t)))
			case "rescheduled":
				// No port: the lost task can run beside the other.
				// Swarm spreads the two replicas over the two workers.
				common = append(common, "--replicas", "2")
			}
			if r := labreg(t, env, append([]string{"deploy", svc, "--image", blue}, common...)...); r.code != 0 {
				t.Fatalf("deploy blue: exit %d", r.code)
			}

			done := make(chan result, 1)
			go func() { done <- runLabreg(bin, env, append([]string{"deploy", svc, "--image", green}, common...)...) }()
			// Wait until one worker runs green; the other still runs blue.
			var updated, victim *testenv.Node
			deadline := time.Now().Add(3 * time.Minute)
			for updated == nil {
				for i, w := range workers {
					if c := containers(t, docker, w, svc); len(c) == 1 && c[0] == green {
						updated, victim = w, workers[1-i]
					}
				}
				select {
				case r := <-done:
					t.Fatalf("labreg deploy green ended (exit %d) before a worker ran green:\n%s", r.code, r.err)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("no worker runs green after 3 minutes")
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("%s runs green; stopping the dockerd of %s, which runs blue", updated.Name, victim.Name)
			crashed := time.Now()
			if err := victim.Crash(); err != nil {
				t.Fatal(err)
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(6 * time.Minute):
				t.Fatal("labreg deploy green did not end within its --timeout")
			}
			took := time.Since(crashed)
			t.Logf("labreg deploy green: exit %d, %s after the crash\nstdout:\n%s\nstderr:\n%s", r.code, took.Round(time.Millisecond), r.out, r.err)
			if mode == "rescheduled" {
				if r.code != 0 || !strings.Contains(r.out, green+"\t2 tasks running") {
					t.Errorf("exit %d, want 0 and 2 tasks running green", r.code)
				}
				if c := containers(t, docker, updated, svc); len(c) != 2 || c[0] != green || c[1] != green {
					t.Errorf("%s runs %v, want both tasks of %s", updated.Name, c, green)
				}
				if took > 2*time.Minute {
					t.Errorf("labreg ended %s after the crash, want well before its 5m timeout", took.Round(time.Second))
				}
				return
			}
			if r.code != 3 {
				t.Errorf("exit %d, want 3 (rollout did not converge)", r.code)
			}
			if !strings.Contains(r.err, "labreg: service "+svc+": rollout failed") || !strings.Contains(lastLine(r.err), victim.Name) {
				t.Errorf("the error does not name the node that went down (%s)", victim.Name)
			}
			if strings.Contains(r.err, "converged") || strings.Contains(r.out, "tasks running") {
				t.Errorf("labreg reported the rollout converged with %s down", victim.Name)
			}
			// Swarm marks a node down 10-20 s after its heartbeats stop;
			// labreg then allows 10 s for rescheduling. Far from --timeout.
			if took > 2*time.Minute {
				t.Errorf("labreg ended %s after the crash, want well before its 5m timeout", took.Round(time.Second))
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
