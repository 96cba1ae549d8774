package registry

import (
	"context"
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
// closing waits for the writes in flight.
type gate struct {
	mu       sync.Mutex
	closed   bool
	reason   string
	inflight int
	idle     chan struct{} // closed when inflight drops to 0 while closing
	// lock, when set, is <data>/.lock: held shared while writes are in
	// flight, so that an offline GC (exclusive) and writes exclude each other.
	lock *os.File
}

func newGate() *gate { return &gate{} }

// enter admits one write, or returns the reason writes are refused.
func (g *gate) enter() (bool, string) {
	if g == nil {
		return true, ""
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false, g.reason
	}
	if g.inflight == 0 && g.lock != nil {
		if err := syscall.Flock(int(g.lock.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
			return false, "offline garbage collection"
		}
	}
	g.inflight++
	return true, ""
}

func (g *gate) leave() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	if g.inflight == 0 && g.lock != nil {
		syscall.Flock(int(g.lock.Fd()), syscall.LOCK_UN)
	}
	if g.inflight == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close refuses new writes and waits for those in flight. When ctx ends
// first the gate opens again.
func (g *gate) close(ctx context.Context, reason string) error {
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
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
		g.open()
		return ctx.Err()
	}
}

func (g *gate) open() {
	g.mu.Lock()
	g.closed, g.reason, g.idle = false, "", nil
	g.mu.Unlock()
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
// writes in flight to finish first.
func (s *Server) ReadOnly(ctx context.Context, reason string) (resume func(), err error) {
	g := s.extras.gate
	if err := g.close(ctx, reason); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(g.open) }, nil
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
