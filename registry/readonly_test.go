package registry

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestGateGivesUp: a write in flight that does not stop when aborted
// makes close fail after the drain bound and the grace, with a message
// saying so, and leaves the gate open; a write that stops when aborted lets
// close succeed.
func TestGateGivesUp(t *testing.T) {
	const drain = 200 * time.Millisecond
	g := newGate()
	aborted := make(chan struct{}, 1)
	id, ok, _ := g.enter(func() { aborted <- struct{}{} }) // ignores the abort
	if !ok {
		t.Fatal("gate refused a write while open")
	}
	start := time.Now()
	err := g.close(context.Background(), "garbage collection", drain)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "garbage collection gave up: 1 writes") {
		t.Errorf("close with a write that ignores the abort: %v", err)
	}
	if took < drain+abortGrace || took > drain+abortGrace+2*time.Second {
		t.Errorf("close gave up after %s; want the drain bound plus the grace, %s", took, drain+abortGrace)
	}
	select {
	case <-aborted:
	default:
		t.Error("the write in flight was not asked to stop")
	}
	if closed, _ := g.state(); closed {
		t.Error("the gate stays closed after giving up")
	}
	g.leave(id)

	// A write that stops when asked: close succeeds once it has.
	id, _, _ = g.enter(nil)
	g.mu.Lock()
	g.aborts[id] = func() { go g.leave(id) }
	g.mu.Unlock()
	if err := g.close(context.Background(), "garbage collection", drain); err != nil {
		t.Errorf("close with a write that stops when aborted: %v", err)
	}
	if g.inflight != 0 {
		t.Errorf("%d writes in flight after close", g.inflight)
	}
}
