package testenv

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// The one swarm is shared by every test package, and `go test ./...` runs
// packages in parallel. Extra worker nodes (Worker) cannot reach a
// registry on the host's loopback, so while they are joined no test may
// create a service the scheduler could place on them. A file lock across
// processes keeps the two apart: Worker holds it exclusively,
// SwarmServices shared.
var swarmLock struct {
	sync.Mutex
	f    *os.File
	mode int
	refs int
}

func lockSwarm(t testing.TB, mode int) {
	t.Helper()
	swarmLock.Lock()
	defer swarmLock.Unlock()
	if swarmLock.refs > 0 && swarmLock.mode == mode {
		swarmLock.refs++
	} else {
		if swarmLock.refs > 0 {
			t.Fatal("testenv: a test holds the swarm lock in another mode (Worker and SwarmServices in one test binary at once)")
		}
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "labreg-test-swarm.lock"), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), mode); err != nil {
			f.Close()
			t.Fatalf("locking the test swarm: %v", err)
		}
		swarmLock.f, swarmLock.mode, swarmLock.refs = f, mode, 1
	}
	t.Cleanup(func() {
		swarmLock.Lock()
		defer swarmLock.Unlock()
		if swarmLock.refs--; swarmLock.refs == 0 {
			swarmLock.f.Close() // releases the flock
			swarmLock.f = nil
		}
	})
}

// SwarmServices must be called by a test that creates swarm services
// without placement constraints: it waits until no extra worker node is
// joined (see Worker) and keeps them out until the test ends.
func SwarmServices(t testing.TB) {
	t.Helper()
	lockSwarm(t, syscall.LOCK_SH)
}
