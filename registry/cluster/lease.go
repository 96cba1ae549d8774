package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// LeaseState is the lease object as stored.
type LeaseState struct {
	// Holder is the replica that holds the lease; "" when it is free.
	Holder string `json:"holder,omitempty"`
	// Token names one acquisition (random): replicas acknowledge it.
	Token string `json:"token,omitempty"`
	// Epoch counts acquisitions: a fencing number that only grows (a
	// released lease stays in the store, free, with its epoch).
	Epoch uint64 `json:"epoch"`
	// TTL is how long the lease lasts unless renewed. Others judge
	// expiry by their own clock from when they saw this version, never
	// by Renewed (clocks differ).
	TTL time.Duration `json:"ttl"`
	// Renewed is when the holder last wrote it, by the holder's clock
	// (for people).
	Renewed time.Time `json:"renewed"`
	// Nonce makes every write's content, so its ETag, new.
	Nonce string `json:"nonce"`
}

// HeldError is an acquisition refused because another holds the lease.
type HeldError struct {
	Holder string
	Epoch  uint64
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("held by replica %s (acquisition %d)", e.Holder, e.Epoch)
}

// ErrLost is what a holder's checks return once its lease may be someone
// else's: it was taken over, or not renewed in time.
var ErrLost = errors.New("the lease was lost")

// Lease is one lease object as seen by one process: it acquires it and
// observes it. A holder that stops renewing loses it TTL after the last
// renewal anyone saw: an observer counts TTL by its own clock from the
// moment it first saw the version, so clocks need not agree, only run at
// about the same rate. The holder acts only until half a TTL before
// that (counted from the start of its last successful write), which
// leaves room for a slow request to land, and renews every sixth of a TTL.
type Lease struct {
	cas CAS
	key string
	id  string
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	seenVer string    // the version last observed
	seenAt  time.Time // when seenVer was first observed
	mine    string    // the token this process holds ("": none)
}

// NewLease is the lease at key in cas, for replica id; ttl is how long an
// acquisition lasts unless renewed.
func NewLease(cas CAS, key, id string, ttl time.Duration) *Lease {
	return &Lease{cas: cas, key: key, id: id, ttl: ttl, now: time.Now}
}

// Store is the CAS the lease lives in.
func (l *Lease) Store() CAS { return l.cas }

// View is the lease as Observe saw it.
type View struct {
	State   LeaseState
	Version string // "" when there is no lease object
	// Held: a holder has renewed within the TTL as far as this process
	// can tell (a version seen for less than a TTL counts as renewed).
	Held bool
	// Mine: held by this process.
	Mine bool
}

// Observe reads the lease. A lease object that cannot be parsed counts as
// held by "unknown" until it expires like any other.
func (l *Lease) Observe(ctx context.Context) (View, error) {
	sent := l.now()
	data, ver, err := l.cas.Get(ctx, l.key)
	if errors.Is(err, ErrNotExist) {
		return View{}, nil
	}
	if err != nil {
		return View{}, err
	}
	var st LeaseState
	if json.Unmarshal(data, &st) != nil {
		st = LeaseState{Holder: "unknown"}
	}
	ttl := st.TTL
	if ttl <= 0 || ttl > 10*l.ttl {
		ttl = l.ttl
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if ver != l.seenVer {
		l.seenVer, l.seenAt = ver, now
	}
	v := View{State: st, Version: ver}
	// A slow answer may show a version the holder has renewed since it
	// was read: it never declares a lease expired.
	slow := now.Sub(sent) > ttl/6
	v.Held = st.Holder != "" && (now.Sub(l.seenAt) < ttl || slow)
	v.Mine = v.Held && st.Token != "" && st.Token == l.mine
	return v, nil
}

func nonce() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Acquire takes the lease if it is free or expired; a *HeldError when
// another holds it (or won the race to it).
func (l *Lease) Acquire(ctx context.Context) (*Held, error) {
	v, err := l.Observe(ctx)
	if err != nil {
		return nil, err
	}
	if v.Held {
		return nil, &HeldError{Holder: v.State.Holder, Epoch: v.State.Epoch}
	}
	st := LeaseState{Holder: l.id, Token: nonce(), Epoch: v.State.Epoch + 1, TTL: l.ttl, Renewed: l.now().UTC(), Nonce: nonce()}
	l.mu.Lock()
	if l.mine != "" {
		l.mu.Unlock()
		return nil, &HeldError{Holder: l.id + " (this process)", Epoch: v.State.Epoch}
	}
	l.mine = st.Token // before the write: an Observe racing it sees its own
	l.mu.Unlock()
	b, _ := json.Marshal(st)
	start := l.now()
	var ver string
	if v.Version == "" {
		ver, err = l.cas.Create(ctx, l.key, b)
	} else {
		ver, err = l.cas.Replace(ctx, l.key, v.Version, b)
	}
	if err != nil && !errors.Is(err, ErrConflict) {
		// The write may have landed although its answer was lost.
		if v, ok := l.landed(context.WithoutCancel(ctx), st); ok {
			ver, err = v, nil
		}
	}
	if err != nil {
		l.forget(st.Token)
		if errors.Is(err, ErrConflict) {
			if now, oerr := l.Observe(ctx); oerr == nil && now.Held {
				return nil, &HeldError{Holder: now.State.Holder, Epoch: now.State.Epoch}
			}
			return nil, &HeldError{Holder: "another replica", Epoch: v.State.Epoch + 1}
		}
		return nil, err
	}
	return &Held{l: l, state: st, ver: ver, validUntil: start.Add(l.ttl / 2)}, nil
}

// landed reads the lease after a write whose answer was lost: its version
// when the store holds exactly st (the write landed).
func (l *Lease) landed(ctx context.Context, st LeaseState) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	data, ver, err := l.cas.Get(ctx, l.key)
	var got LeaseState
	if err != nil || json.Unmarshal(data, &got) != nil {
		return "", false
	}
	return ver, got.Token == st.Token && got.Nonce == st.Nonce
}

func (l *Lease) forget(token string) {
	l.mu.Lock()
	if l.mine == token {
		l.mine = ""
	}
	l.mu.Unlock()
}

// Held is an acquisition of the lease by this process.
type Held struct {
	l *Lease

	mu         sync.Mutex
	state      LeaseState
	ver        string
	validUntil time.Time
	lost       error
}

// Token names this acquisition.
func (h *Held) Token() string { return h.state.Token }

// Epoch is this acquisition's fencing number.
func (h *Held) Epoch() uint64 { return h.state.Epoch }

// Check says whether this process may still act as the holder, by its own
// clock: nil until half a TTL before the earliest moment another could
// take the lease over. It asks nothing of the store.
func (h *Held) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost != nil {
		return h.lost
	}
	if !h.l.now().Before(h.validUntil) {
		h.lost = fmt.Errorf("%w: not renewed in time", ErrLost)
		return h.lost
	}
	return nil
}

// Verify is Check and then a read of the lease: the version this process
// last wrote must still be the store's.
func (h *Held) Verify(ctx context.Context) error {
	if err := h.Check(); err != nil {
		return err
	}
	_, ver, err := h.l.cas.Get(ctx, h.l.key)
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case errors.Is(err, ErrNotExist) || err == nil && ver != h.ver:
		h.lost = fmt.Errorf("%w: another replica wrote it", ErrLost)
		return h.lost
	case err != nil:
		return err
	}
	return nil
}

// Renew extends the lease by a TTL from now.
func (h *Held) Renew(ctx context.Context) error {
	if err := h.Check(); err != nil {
		return err
	}
	h.mu.Lock()
	st, ver := h.state, h.ver
	h.mu.Unlock()
	st.Renewed, st.Nonce = h.l.now().UTC(), nonce()
	b, _ := json.Marshal(st)
	start := h.l.now()
	nv, err := h.l.cas.Replace(ctx, h.l.key, ver, b)
	if err != nil && !errors.Is(err, ErrConflict) {
		if v, ok := h.l.landed(context.WithoutCancel(ctx), st); ok {
			nv, err = v, nil
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if errors.Is(err, ErrConflict) {
		h.lost = fmt.Errorf("%w: another replica wrote it", ErrLost)
		return h.lost
	}
	if err != nil {
		return err
	}
	h.state, h.ver = st, nv
	if v := start.Add(h.l.ttl / 2); v.After(h.validUntil) {
		h.validUntil = v
	}
	return nil
}

// Until is when Check starts failing unless the lease is renewed first:
// a deadline for what the holder sends meanwhile.
func (h *Held) Until() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.validUntil
}

// Keep renews the lease every sixth of a TTL until ctx ends (a renewal
// under way then is finished first), and calls lost (once) when it can no
// longer act as the holder.
func (h *Held) Keep(ctx context.Context, lost func(error)) {
	t := time.NewTicker(h.l.ttl / 6)
	defer t.Stop()
	for {
		h.mu.Lock()
		left := h.validUntil.Sub(h.l.now())
		h.mu.Unlock()
		expire := time.NewTimer(max(left, 0))
		select {
		case <-ctx.Done():
			expire.Stop()
			return
		case <-t.C:
			// Not cut when ctx ends: a renewal cut in flight may land
			// unseen, and the release after it would not match.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.l.ttl/6)
			err := h.Renew(rctx)
			cancel()
			if errors.Is(err, ErrLost) {
				expire.Stop()
				lost(err)
				return
			}
		case <-expire.C:
		}
		expire.Stop()
		if err := h.Check(); err != nil {
			lost(err)
			return
		}
	}
}

// Release frees the lease if this process still holds it: the object
// stays, free, with its epoch. A lease already lost is left alone.
func (h *Held) Release(ctx context.Context) error {
	defer h.l.forget(h.state.Token)
	h.mu.Lock()
	st, ver, lost := h.state, h.ver, h.lost
	h.mu.Unlock()
	if lost != nil {
		return nil
	}
	free := LeaseState{Epoch: st.Epoch, TTL: st.TTL, Renewed: h.l.now().UTC(), Nonce: nonce()}
	b, _ := json.Marshal(free)
	if _, err := h.l.cas.Replace(ctx, h.l.key, ver, b); err != nil && !errors.Is(err, ErrConflict) {
		return err
	}
	return nil
}
