package testenv

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestWorkerRemovesStale: a worker whose run was killed (its dockerd
// stopped, the node never left the swarm) is down in the node list; the
// next Worker removes that node, its netns and veth, and leaves the manager
// and ready nodes alone.
func TestWorkerRemovesStale(t *testing.T) {
	docker := Swarm(t)
	node := func(id string) string {
		out, _ := exec.Command(docker, "node", "inspect", id, "--format", "{{.Status.State}}").Output()
		return strings.TrimSpace(string(out))
	}
	link := func(args ...string) bool { return exec.Command("ip", args...).Run() == nil }
	manager, err := exec.Command(docker, "info", "--format", "{{.Swarm.NodeID}}").Output()
	if err != nil {
		t.Fatal(err)
	}

	stale := Worker(t, "wstale")
	live := Worker(t, "wlive")
	n := strings.TrimPrefix(stale.Name, "wstale-")
	ns, veth := "labreg-w"+n, "lrw"+n+"h"
	// What a killed `go test` leaves: dockerd gone without `swarm leave`.
	if err := stale.Crash(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for node(stale.ID) != "down" {
		if time.Now().After(deadline) {
			t.Fatalf("stale worker %s is %q after 60s, not down", stale.Name, node(stale.ID))
		}
		time.Sleep(250 * time.Millisecond)
	}
	liveWorkers.Delete(mustAtoi(t, n)) // as if its process had died
	if !link("netns", "pids", ns) || !link("link", "show", veth) {
		t.Fatalf("netns %s or veth %s missing before the sweep", ns, veth)
	}

	fresh := Worker(t, "wfresh")
	if s := node(stale.ID); s != "" {
		t.Errorf("stale worker node %s still in the swarm (%s)", stale.Name, s)
	}
	if link("netns", "pids", ns) {
		t.Errorf("stale netns %s not removed", ns)
	}
	if link("link", "show", veth) {
		t.Errorf("stale veth %s not removed", veth)
	}
	for _, id := range []string{strings.TrimSpace(string(manager)), live.ID, fresh.ID} {
		if s := node(id); s != "ready" {
			t.Errorf("node %s is %q after the sweep, want ready", id, s)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("worker number %q", s)
	}
	return n
}
