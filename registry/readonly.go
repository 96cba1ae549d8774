package registry

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// RetryAfter is what a write refused by the runtime read-only gate is told
// to wait before retrying.
const RetryAfter = 10 * time.Second

// gate is a runtime read-only switch: while closed, writes are refused;
// closing waits for the writes in flight, for a bounded time.
type gate struct {
	mu       sync.Mutex
	closed   bool
	reason   string
	inflight int
	idle     chan struct{} // closed when inflight drops to 0 while closing
	// aborts stops each write in flight that gave a way to (see enter).
	aborts map[uint64]func()
	nextID uint64
	// admit, when set, is asked before each write: a reason refuses it
	// (a replica out of touch with its cluster).
	admit func() string
	// lock, when set, is <data>/.lock: held shared while writes are in
	// flight, so that an offline GC (exclusive) and writes exclude each other.
	lock *os.File
}

func newGate() *gate { return &gate{aborts: map[uint64]func(){}} }

// abortGrace is how long close waits for aborted writes to end.
const abortGrace = 5 * time.Second

// enter admits one write, or returns the reason writes are refused. abort,
// when not nil, makes the write stop soon (close calls it when the writes in
// flight outlast its bound); id is what leave takes.
func (g *gate) enter(abort func()) (id uint64, ok bool, reason string) {
	if g == nil {
		return 0, true, ""
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, false, g.reason
	}
	if g.admit != nil {
		if r := g.admit(); r != "" {
			return 0, false, r
		}
	}
	if g.inflight == 0 && g.lock != nil {
		if err := syscall.Flock(int(g.lock.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
			return 0, false, "offline garbage collection"
		}
	}
	g.inflight++
	g.nextID++
	if abort != nil {
		g.aborts[g.nextID] = abort
	}
	return g.nextID, true, ""
}

func (g *gate) leave(id uint64) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.aborts, id)
	g.inflight--
	if g.inflight == 0 && g.lock != nil {
		syscall.Flock(int(g.lock.Fd()), syscall.LOCK_UN)
	}
	if g.inflight == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close refuses new writes and waits for those in flight, at most drain
// (0: no bound). Writes still in flight then are aborted (their clients get
// 503 and retry) and given abortGrace to end; if some still have not, or
// ctx ends first, the gate opens again and close fails.
func (g *gate) close(ctx context.Context, reason string, drain time.Duration) error {
	g.mu.Lock()
	if g.closed {
		r := g.reason
		g.mu.Unlock()
		return &BusyError{Reason: r}
	}
	g.closed, g.reason = true, reason
	var wait chan struct{}
	if g.inflight > 0 {
		wait = make(chan struct{})
		g.idle = wait
	}
	g.mu.Unlock()
	if wait == nil {
		return nil
	}
	if done, err := g.waitIdle(ctx, wait, drain); done || err != nil {
		return err
	}
	g.mu.Lock()
	n := g.inflight
	aborts := make([]func(), 0, len(g.aborts))
	for _, f := range g.aborts {
		aborts = append(aborts, f)
	}
	g.mu.Unlock()
	for _, f := range aborts {
		f()
	}
	if done, err := g.waitIdle(ctx, wait, abortGrace); done || err != nil {
		return err
	}
	g.open()
	return fmt.Errorf("%s gave up: %d writes were still in flight %s after the registry turned read-only (the GC drain timeout), and did not stop when asked; nothing was changed, try again", reason, n, drain)
}

// waitIdle waits until wait is closed (the writes in flight ended: true),
// ctx ends (the gate opens again; ctx's error) or timeout passes (false;
// timeout <= 0: no bound).
func (g *gate) waitIdle(ctx context.Context, wait <-chan struct{}, timeout time.Duration) (bool, error) {
	var bound <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		bound = t.C
	}
	select {
	case <-wait:
		return true, nil
	case <-ctx.Done():
		g.open()
		return false, ctx.Err()
	case <-bound:
		return false, nil
	}
}

func (g *gate) open() {
	g.mu.Lock()
	g.closed, g.reason, g.idle = false, "", nil
	g.mu.Unlock()
}

// reasonNow is why the gate is closed ("" when open).
func (g *gate) reasonNow() string {
	_, r := g.state()
	return r
}

// state reports whether the gate is closed and why.
func (g *gate) state() (bool, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed, g.reason
}

// BusyError is returned by ReadOnly when the registry is already
// read-only for another reason (another GC).
type BusyError struct{ Reason string }

func (e *BusyError) Error() string { return "registry is already read-only: " + e.Reason }

// ReadOnly puts the registry into read-only mode until resume is called:
// pushes and deletes get 503 UNAVAILABLE with Retry-After. It waits for
// writes in flight to finish first, for at most Options.GCDrainTimeout;
// writes still in flight then are aborted with 503 (clients retry), and if
// they do not end within a few seconds more ReadOnly fails.
func (s *Server) ReadOnly(ctx context.Context, reason string) (resume func(), err error) {
	g := s.extras.gate
	if err := g.close(ctx, reason, s.opts.GCDrainTimeout); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(g.open) }, nil
}

// WritesInFlight is the number of writes (pushes, deletes) being served.
func (s *Server) WritesInFlight() int {
	g := s.extras.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inflight
}

// ReadOnlyState reports whether the registry is in runtime read-only mode and why.
func (s *Server) ReadOnlyState() (bool, string) { return s.extras.gate.state() }

func isWrite(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// writeUnavailable answers a refused write with an OCI error body.
func writeUnavailable(w http.ResponseWriter, reason string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(RetryAfter.Seconds())))
	WriteError(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.
		WithMessage("registry is temporarily read-only ("+reason+"); retry in a few seconds").
		WithDetail(map[string]any{"retry_after_seconds": int(RetryAfter.Seconds()), "reason": reason}))
}
