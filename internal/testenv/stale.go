package testenv

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// workerHostname is the hostname Worker gives its nodes: NAME-<n>, where
// n also names the node's netns (labreg-w<n>) and host veth (lrw<n>h).
var workerHostname = regexp.MustCompile(`^[a-z][a-z0-9]*-([0-9]+)$`)

// liveWorkers are the numbers n of this process's running workers.
var liveWorkers sync.Map

// swarmNode is the part of `docker node inspect` the sweep looks at.
type swarmNode struct {
	ID   string
	Spec struct {
		Role string
	}
	Description struct {
		Hostname string
	}
	Status struct {
		State string
	}
	ManagerStatus *struct{}
}

// staleWorker reports whether nd is a worker a killed earlier run left:
// down, a worker and no manager, named like Worker names its nodes. It
// returns the worker's number n.
func staleWorker(nd swarmNode) (int, bool) {
	if nd.Status.State != "down" || nd.Spec.Role != "worker" || nd.ManagerStatus != nil {
		return 0, false
	}
	m := workerHostname.FindStringSubmatch(nd.Description.Hostname)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// removeStaleWorkers removes the worker nodes of earlier test runs that
// were killed before their cleanup (a `go test` timeout, a killed process
// group): nodes that are down and named like Worker names nodes, and the
// netns and veth of each. Ready nodes, managers and this process's own
// workers are never touched. Call it holding the exclusive swarm lock, so
// that no other process's worker is starting.
func removeStaleWorkers(t testing.TB, docker string) {
	t.Helper()
	out, err := exec.Command(docker, "node", "ls", "-q").Output()
	if err != nil {
		t.Fatalf("listing swarm nodes: %v", err)
	}
	ids := strings.Fields(string(out))
	if len(ids) == 0 {
		return
	}
	out, err = exec.Command(docker, append([]string{"node", "inspect"}, ids...)...).Output()
	if err != nil {
		t.Fatalf("inspecting swarm nodes: %v", err)
	}
	var nodes []swarmNode
	if err := json.Unmarshal(out, &nodes); err != nil {
		t.Fatalf("reading docker node inspect: %v", err)
	}
	inUse := map[int]bool{} // numbers of harness-named nodes that are not down
	for _, nd := range nodes {
		if m := workerHostname.FindStringSubmatch(nd.Description.Hostname); m != nil && nd.Status.State != "down" {
			n, _ := strconv.Atoi(m[1])
			inUse[n] = true
		}
	}
	for _, nd := range nodes {
		n, ok := staleWorker(nd)
		if !ok {
			continue
		}
		if out, err := exec.Command(docker, "node", "rm", "--force", nd.ID).CombinedOutput(); err != nil {
			t.Logf("testenv: removing stale worker node %s (%s): %v: %s", nd.Description.Hostname, nd.ID, err, out)
			continue
		}
		t.Logf("testenv: removed stale worker node %s (%s, down) of an earlier run", nd.Description.Hostname, nd.ID)
		if _, live := liveWorkers.Load(n); live || inUse[n] {
			continue // the number is in use again: the netns is not the stale one's
		}
		ns, veth := fmt.Sprintf("labreg-w%d", n), fmt.Sprintf("lrw%dh", n)
		if exec.Command("ip", "netns", "del", ns).Run() == nil {
			t.Logf("testenv: removed stale netns %s", ns)
		}
		if exec.Command("ip", "link", "del", veth).Run() == nil {
			t.Logf("testenv: removed stale veth %s", veth)
		}
	}
}
