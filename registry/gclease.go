package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/labreg/labreg/registry/cluster"
)

// Garbage collection across replicas on a shared store. One GC at a time
// cluster-wide: the replica that runs it holds a lease (cluster.Lease at
// gcLeasePath), taken and renewed by the store's compare-and-swap (or
// Redis's, for a store that does not honour conditional writes: each
// replica probes at start; with neither, cluster GC is refused). Every
// replica watches the lease (after a change signal, then every
// leaseWatchEvery while one is held), turns read-only (writes in flight
// drained for at most its GC drain timeout, then aborted with 503) and
// acknowledges under gcAckPath with the lease's token. The GC starts once
// every live replica (a heartbeat under replicasPath younger than
// replicaStale, by the store's clock) has acknowledged, and fails,
// changing nothing, when one has not within the drain timeout plus a few
// polls. The sweep is fenced: each delete first checks that the lease is
// still this replica's. When the sweep is done the GC's journal entry
// makes every replica drop the descriptors of the removed blobs; then the
// lease is released and the replicas accept writes again (each applies the
// journal before it reopens). A replica that dies holding the lease loses
// it gcLeaseTTL after the last renewal the others saw. A replica stays
// read-only while any lease but one its own process holds is valid (one
// naming its own id, left by an earlier run, included).

const (
	// gcLeaseTTL is how long a lease lasts unless renewed (every third).
	gcLeaseTTL = 30 * time.Second
	// leaseWatchEvery is how often a replica reads the lease while one
	// is held (and while it has not decided where the lease lives).
	leaseWatchEvery = time.Second
	// heartbeatEvery is how often a replica says it is alive: a PUT, the
	// dearest request an idle replica makes. While another replica's
	// lease is held it beats every busyHeartbeat, so that the holder can
	// tell a live replica that drains from a dead one.
	heartbeatEvery = 30 * time.Second
	busyHeartbeat  = 2 * time.Second
	// beatTimeout bounds one heartbeat's request.
	beatTimeout = 10 * time.Second
	// replicaStale: a replica not heard of for this long is not waited for.
	replicaStale = 5 * heartbeatEvery / 2
	// beatFresh: a replica whose last heartbeat the store took was sent
	// longer ago than this admits no writes (heartbeat).
	beatFresh = replicaStale - heartbeatEvery
	// joinTimeout bounds a replica's first look at the cluster at start.
	joinTimeout = 20 * time.Second
)

func gcLeasePath() string             { return path.Join(labregRoot, "gc", "lease") }
func gcAckPath(replica string) string { return path.Join(labregRoot, "gc", "ack", replica) }
func replicasPath() string            { return path.Join(labregRoot, "replicas") }
func heartbeatPath(replica string) string {
	return path.Join(replicasPath(), replica)
}
func clusterProbeDir() string { return path.Join(labregRoot, "cluster") }

// member is a replica's part in the cluster: the change signal it polls,
// where the GC lease lives, and what it follows.
type member struct {
	s3    *cluster.S3    // the shared store, for the signal and its CAS
	redis *cluster.Redis // nil unless registry.redis is set

	mu      sync.Mutex
	lease   *cluster.Lease // nil until decided, or when refused
	refused error          // why cluster GC cannot be coordinated

	kick chan struct{} // wakes the lease follower (cap 1)
	// watch: another's lease is held; the follower reads it every
	// leaseWatchEvery.
	watch atomic.Bool

	// instance names this process in its heartbeat (a restarted replica
	// keeps its replica id).
	instance string
	// beatSent is when the last heartbeat the store took was sent (unix ns).
	beatSent atomic.Int64
	// answered is when the store last answered the change signal's poll
	// (unix ns); failed, the error of a poll since (health).
	answered atomic.Int64
	failed   atomic.Pointer[error]

	// The lease follower's state (its goroutine, or join before it).
	following string // the token this replica acknowledged
	closed    bool   // this replica's gate is closed for another's lease
}

func (m *member) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *member) gcLease() (*cluster.Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease, m.refused
}

// decide finds where the GC lease lives: in the store when it honours
// conditional writes, else in Redis when configured, else nowhere (cluster
// GC refused, saying why). An error (the store did not answer) leaves it
// undecided.
func (m *member) decide(ctx context.Context, id string) error {
	if l, refused := m.gcLease(); l != nil || refused != nil {
		return nil
	}
	var l *cluster.Lease
	var refused error
	err := cluster.Probe(ctx, m.s3, clusterProbeDir())
	switch {
	case err == nil:
		l = cluster.NewLease(m.s3, gcLeasePath(), id, gcLeaseTTL)
	case !errors.Is(err, cluster.ErrNoConditionalWrites):
		return err
	case m.redis == nil:
		refused = fmt.Errorf("garbage collection across replicas needs a compare-and-swap: %w, and registry.redis is not set; set registry.redis (the same for every replica), or use a store that honours If-None-Match and If-Match", err)
	default:
		if rerr := cluster.Probe(ctx, m.redis, clusterProbeDir()); rerr != nil {
			return rerr
		}
		l = cluster.NewLease(m.redis, gcLeasePath(), id, gcLeaseTTL)
	}
	m.mu.Lock()
	m.lease, m.refused = l, refused
	m.mu.Unlock()
	return nil
}

// heartbeat records that this replica is alive (the object's time is the
// store's) and, when the store took it, when it was sent: a replica
// accepts writes only while its last heartbeat the store took was sent
// less than beatFresh ago (member.writable), so that a replica another's
// GC counts as gone (a heartbeat older than replicaStale, by the store's
// clock, which is later than the send) stopped admitting writes
// replicaStale-beatFresh before.
func (s *Server) heartbeat(ctx context.Context) error {
	j, m := s.extras.journal, s.extras.member
	ctx, cancel := context.WithTimeout(ctx, beatTimeout)
	defer cancel()
	sent := time.Now()
	if err := j.drv.PutContent(ctx, heartbeatPath(j.id), []byte(m.instance+" "+sent.UTC().Format(time.RFC3339Nano))); err != nil {
		return err
	}
	m.beatSent.Store(sent.UnixNano())
	return nil
}

// storeSilence is how long the store may not answer before /healthz says so.
const storeSilence = 30 * time.Second

// polled records how the store answered a poll of the change signal.
func (m *member) polled(err error) {
	if err != nil {
		m.failed.Store(&err)
		return
	}
	m.answered.Store(time.Now().UnixNano())
	m.failed.Store(nil)
}

// health is the store's health as this replica's polls saw it: an error
// once it has not answered for storeSilence (counted from the replica's
// start while it never has).
func (m *member) health() error {
	last := m.answered.Load()
	if time.Since(time.Unix(0, last)) < storeSilence {
		return nil
	}
	if e := m.failed.Load(); e != nil {
		return fmt.Errorf("the store has not answered for %s: %w", time.Since(time.Unix(0, last)).Round(time.Second), *e)
	}
	return fmt.Errorf("the store has not answered for %s", time.Since(time.Unix(0, last)).Round(time.Second))
}

// writable is "" while this replica may admit writes, else why not.
func (m *member) writable() string {
	sent := m.beatSent.Load()
	if sent == 0 || time.Since(time.Unix(0, sent)) >= beatFresh {
		return "this replica's heartbeat has not reached the store lately"
	}
	return ""
}

// leave removes this process's heartbeat (a GC need not wait for a
// replica that left), unless another process with the same replica id
// has written it since.
func (s *Server) leave(ctx context.Context) {
	j, m := s.extras.journal, s.extras.member
	ctx, cancel := context.WithTimeout(ctx, beatTimeout)
	defer cancel()
	b, ver, err := m.s3.Get(ctx, heartbeatPath(j.id))
	if err == nil && strings.HasPrefix(string(b), m.instance+" ") {
		_ = m.s3.Delete(ctx, heartbeatPath(j.id), ver)
	}
}

// beats are the times (the store's) of every replica's heartbeat;
// heartbeats older than journalKeep (replicas long gone) are removed.
func (j *journal) beats(ctx context.Context) (map[string]time.Time, error) {
	mods := map[string]time.Time{}
	err := j.drv.Walk(ctx, replicasPath(), func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			mods[path.Base(fi.Path())] = fi.ModTime()
		}
		return nil
	})
	if isPathNotFound(err) {
		return mods, nil
	}
	if err != nil {
		return nil, err
	}
	if ref, ok := mods[j.id]; ok {
		for id, t := range mods {
			if ref.Sub(t) > journalKeep {
				_ = j.drv.Delete(ctx, heartbeatPath(id))
				delete(mods, id)
			}
		}
	}
	return mods, nil
}

// gcTurn is this replica's hold on the cluster's GC.
type gcTurn struct {
	held *cluster.Held
	// ctx ends when the lease is lost (the GC must stop).
	ctx     context.Context
	release func()
}

// fence fails once this replica can no longer be sure it holds the lease.
func (t *gcTurn) fence() error {
	if err := t.held.Check(); err != nil {
		return fmt.Errorf("garbage collection stopped: %w", err)
	}
	return nil
}

// acquireGC takes the cluster's GC lease and waits until every live
// replica is read-only.
func (s *Server) acquireGC(ctx context.Context) (*gcTurn, error) {
	m, j := s.extras.member, s.extras.journal
	if err := m.decide(ctx, j.id); err != nil {
		return nil, fmt.Errorf("garbage collection: the store did not answer: %w", err)
	}
	lease, refused := m.gcLease()
	if refused != nil {
		return nil, refused
	}
	held, err := lease.Acquire(ctx)
	var busy *cluster.HeldError
	if errors.As(err, &busy) {
		return nil, &BusyError{Reason: "garbage collection on replica " + busy.Holder}
	}
	if err != nil {
		return nil, fmt.Errorf("garbage collection: taking the lease: %w", err)
	}
	s.extras.journal.signal(ctx)
	gctx, cancel := context.WithCancelCause(ctx)
	keep, stopKeep := context.WithCancel(context.WithoutCancel(ctx))
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		held.Keep(keep, func(err error) {
			s.log.Error("garbage collection lost its lease: stopping", "err", err)
			cancel(err)
		})
	}()
	t := &gcTurn{held: held, ctx: gctx}
	t.release = func() {
		stopKeep()
		<-kept
		cancel(nil)
		rctx, done := context.WithTimeout(context.WithoutCancel(ctx), gcLeaseTTL)
		defer done()
		if err := held.Release(rctx); err != nil {
			s.log.Warn("releasing the GC lease (it expires by itself)", "err", err)
		}
		s.extras.journal.signal(rctx)
	}
	if err := s.waitAcks(gctx, held.Token()); err != nil {
		t.release()
		return nil, err
	}
	return t, nil
}

// waitAcks waits until every other replica has acknowledged token or is
// gone. Every time is the store's, read off heartbeats (this replica's own
// rewritten at each look), so clocks need not agree. A replica is gone when
// its heartbeat is older than replicaStale; one that has beaten since the
// GC began is alive (a replica beats every few seconds while another's
// lease is held) and is waited for up to the drain bound; one that has
// not is waited for until it beats or goes stale. So a replica that died
// holds the GC (and the cluster read-only) for at most replicaStale, and
// the wait is bounded however slow the store is.
func (s *Server) waitAcks(ctx context.Context, token string) error {
	j := s.extras.journal
	drain := s.opts.GCDrainTimeout + abortGrace + 2*leaseWatchEvery + 5*time.Second
	bound := max(drain, replicaStale+5*time.Second)
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	start := time.Now()
	var began time.Time // the GC's start by the store's clock
	var missing []string
	gaveUp := func(err error) error {
		if len(missing) == 0 {
			return fmt.Errorf("garbage collection gave up after %s: %w; nothing was changed, try again", time.Since(start).Round(time.Second), err)
		}
		return fmt.Errorf("garbage collection gave up: replicas %s did not turn read-only within %s; nothing was changed, try again",
			strings.Join(missing, ", "), time.Since(start).Round(time.Second))
	}
	for {
		if err := s.heartbeat(ctx); err != nil {
			return gaveUp(err)
		}
		beats, err := j.beats(ctx)
		if err != nil {
			return gaveUp(fmt.Errorf("listing replicas: %w", err))
		}
		now, ok := beats[j.id]
		if !ok {
			return gaveUp(errors.New("this replica's heartbeat is not in the store"))
		}
		if began.IsZero() {
			began = now
		}
		missing = missing[:0]
		alive := false
		for id, t := range beats {
			if id == j.id || now.Sub(t) >= replicaStale {
				continue // this one, or gone
			}
			b, err := j.drv.GetContent(ctx, gcAckPath(id))
			if err == nil && strings.TrimSpace(string(b)) == token {
				continue
			}
			missing = append(missing, id)
			alive = alive || t.After(began)
		}
		sort.Strings(missing)
		if len(missing) == 0 {
			return nil
		}
		if alive && time.Since(start) > drain {
			return gaveUp(errors.New("drain bound"))
		}
		select {
		case <-ctx.Done():
			return gaveUp(context.Cause(ctx))
		case <-time.After(leaseWatchEvery):
		}
	}
}

// joinCluster is a replica's first look at the cluster, before it serves:
// its heartbeat, where the lease lives, and whether another replica's GC
// holds it (then it starts read-only). A store that does not answer in
// time leaves it read-only until the lease follower gets an answer.
func (s *Server) joinCluster(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	m, j := s.extras.member, s.extras.journal
	err := s.heartbeat(ctx)
	if err == nil {
		err = m.decide(ctx, j.id)
	}
	if err == nil {
		if err = s.followLease(ctx); err == nil {
			return
		}
	}
	s.log.Warn("joining the cluster: the store did not answer; read-only until it does", "err", err)
	if !m.closed && s.extras.gate.close(ctx, "joining the cluster (the store did not answer)", 0) == nil {
		m.closed = true
	}
}

// leaseLoop follows other replicas' GC leases until ctx ends: at each
// change signal, and every leaseWatchEvery while a lease is held or this
// replica is read-only for one.
func (s *Server) leaseLoop(ctx context.Context) {
	m := s.extras.member
	tick := time.NewTicker(leaseWatchEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-tick.C:
			if l, refused := m.gcLease(); !m.closed && (l != nil || refused != nil) && !m.watch.Load() {
				continue
			}
		}
		if err := m.decide(ctx, s.extras.journal.id); err != nil {
			continue
		}
		if err := s.followLease(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("reading the GC lease", "err", err)
		}
	}
}

// followLease reads the lease once and turns this replica read-only for
// another's (then acknowledges), or reopens it once none is held (after
// applying the journal, so that a GC's entry is applied first).
func (s *Server) followLease(ctx context.Context) error {
	m, j := s.extras.member, s.extras.journal
	lease, _ := m.gcLease()
	if lease == nil {
		m.watch.Store(false)
		if m.closed {
			return s.reopen(ctx)
		}
		return nil
	}
	v, err := lease.Observe(ctx)
	if err != nil {
		return err
	}
	foreign := v.Held && !v.Mine
	m.watch.Store(foreign)
	switch {
	case foreign && v.State.Token != m.following:
		if !m.closed {
			reason := "garbage collection on replica " + v.State.Holder
			if err := s.extras.gate.close(ctx, reason, s.opts.GCDrainTimeout); err != nil {
				return fmt.Errorf("turning read-only for %s: %w", reason, err) // not acknowledged: the GC waits, then gives up
			}
			m.closed = true
		}
		if err := j.drv.PutContent(ctx, gcAckPath(j.id), []byte(v.State.Token)); err != nil {
			return fmt.Errorf("acknowledging garbage collection: %w", err)
		}
		m.following = v.State.Token
	case !foreign && m.closed:
		return s.reopen(ctx)
	}
	return nil
}

// reopen accepts writes again, once the journal is applied up to now.
func (s *Server) reopen(ctx context.Context) error {
	m, j := s.extras.member, s.extras.journal
	if err := s.syncJournal(ctx); err != nil {
		return err
	}
	s.extras.gate.open()
	m.closed, m.following = false, ""
	_ = j.drv.Delete(ctx, gcAckPath(j.id))
	return nil
}

// signalContent is what a change signal writes: anything new will do.
func signalContent(replica string) []byte {
	b, _ := json.Marshal(map[string]string{"replica": replica, "time": time.Now().UTC().Format(time.RFC3339Nano), "nonce": randomID()})
	return b
}
