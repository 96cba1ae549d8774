package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// TestWorkerJoinsSwarm checks the harness itself: the extra node joins as
// a ready worker with its own hostname and leaves without a trace.
func TestWorkerJoinsSwarm(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a second dockerd")
	}
	docker := Swarm(t)
	var name string
	t.Run("join", func(t *testing.T) {
		n := Worker(t, "harness")
		name = n.Name
		out, err := exec.Command(docker, "node", "inspect", n.Name, "--format", "{{.Spec.Role}} {{.Status.Addr}} {{.Description.Hostname}}").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "worker "+n.IP+" "+n.Name; got != want {
			t.Errorf("node = %q, want %q", got, want)
		}
	})
	if out, err := exec.Command(docker, "node", "inspect", name).CombinedOutput(); err == nil {
		t.Errorf("node %s still in the swarm after cleanup: %s", name, out)
	}
}
