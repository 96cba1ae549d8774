package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// Garbage collection across replicas on a shared store. One GC at a time
// cluster-wide: the replica that runs it holds a lease in the store
// (gcLeasePath), renewed while it runs. Every replica notices the lease
// at its next journal poll (journal.go), turns read-only (writes in
// flight drained for at most its GC drain timeout, then aborted with 503)
// and acknowledges under gcAckPath with the lease's token. The GC starts
// once every live replica (a heartbeat under replicasPath younger than
// replicaStale) has acknowledged, and fails, changing nothing, when one
// has not within the drain timeout plus a few polls. When the sweep is
// done the GC's journal entry makes every replica drop the descriptors of
// the removed blobs; then the lease goes and the replicas accept writes
// again. A replica that dies holding the lease frees it after gcLeaseTTL.

const (
	// gcLeaseTTL is how long a lease lasts unless renewed (every third).
	gcLeaseTTL = 30 * time.Second
	// heartbeatEvery is how often a replica says it is alive.
	heartbeatEvery = time.Second
	// replicaStale: a replica not heard of for this long is not waited for.
	replicaStale = 5 * time.Second
)

func gcLeasePath() string             { return path.Join(labregRoot, "gc", "lease") }
func gcAckPath(replica string) string { return path.Join(labregRoot, "gc", "ack", replica) }
func replicasPath() string            { return path.Join(labregRoot, "replicas") }
func heartbeatPath(replica string) string {
	return path.Join(replicasPath(), replica)
}

// gcLease is the lease object.
type gcLease struct {
	Holder string    `json:"holder"`
	Token  string    `json:"token"`
	Until  time.Time `json:"until"`
}

func (l gcLease) valid(now time.Time) bool { return l.Holder != "" && now.Before(l.Until) }

func (j *journal) readLease(ctx context.Context) (gcLease, error) {
	var l gcLease
	b, err := j.drv.GetContent(ctx, gcLeasePath())
	if isPathNotFound(err) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	if json.Unmarshal(b, &l) != nil {
		return gcLease{}, nil // torn or foreign: treat as free
	}
	return l, nil
}

func (j *journal) writeLease(ctx context.Context, l gcLease) error {
	b, _ := json.Marshal(l)
	return j.drv.PutContent(ctx, gcLeasePath(), b)
}

// heartbeat records that this replica is alive.
func (j *journal) heartbeat(ctx context.Context) error {
	return j.drv.PutContent(ctx, heartbeatPath(j.id), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
}

// liveReplicas are the other replicas heard of within replicaStale.
func (j *journal) liveReplicas(ctx context.Context) ([]string, error) {
	paths, err := j.drv.List(ctx, replicasPath())
	if isPathNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var live []string
	for _, p := range paths {
		id := path.Base(p)
		if id == j.id {
			continue
		}
		b, err := j.drv.GetContent(ctx, p)
		if err != nil {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
		switch {
		case err == nil && time.Since(t) < replicaStale:
			live = append(live, id)
		case err == nil && time.Since(t) > journalKeep:
			_ = j.drv.Delete(ctx, p) // a replica long gone
		}
	}
	sort.Strings(live)
	return live, nil
}

// acquireGC takes the cluster's GC lease and waits until every live
// replica is read-only. release ends it (after the GC's journal entry).
func (s *Server) acquireGC(ctx context.Context) (release func(), err error) {
	j := s.extras.journal
	l, err := j.readLease(ctx)
	if err != nil {
		return nil, fmt.Errorf("garbage collection: reading the lease: %w", err)
	}
	if l.valid(time.Now()) && l.Holder != j.id {
		return nil, &BusyError{Reason: "garbage collection on replica " + l.Holder}
	}
	var tok [8]byte
	rand.Read(tok[:])
	mine := gcLease{Holder: j.id, Token: hex.EncodeToString(tok[:]), Until: time.Now().Add(gcLeaseTTL)}
	if err := j.writeLease(ctx, mine); err != nil {
		return nil, fmt.Errorf("garbage collection: writing the lease: %w", err)
	}
	// Two replicas that wrote at once: the store keeps the last write, and
	// both see which after a pause longer than one write.
	select {
	case <-time.After(2 * journalPoll):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if l, err := j.readLease(ctx); err != nil || l.Token != mine.Token {
		return nil, &BusyError{Reason: "garbage collection on replica " + l.Holder}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // renew
		defer close(done)
		t := time.NewTicker(gcLeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				mine.Until = time.Now().Add(gcLeaseTTL)
				if err := j.writeLease(context.WithoutCancel(ctx), mine); err != nil {
					s.log.Warn("renewing the GC lease", "err", err)
				}
			}
		}
	}()
	release = func() {
		close(stop)
		<-done
		if err := j.drv.Delete(context.WithoutCancel(ctx), gcLeasePath()); err != nil && !isPathNotFound(err) {
			s.log.Warn("releasing the GC lease", "err", err)
		}
	}
	if err := s.waitAcks(ctx, mine.Token); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// waitAcks waits until every live replica has acknowledged token.
func (s *Server) waitAcks(ctx context.Context, token string) error {
	j := s.extras.journal
	bound := s.opts.GCDrainTimeout + abortGrace + 4*journalPoll + 2*time.Second
	deadline := time.Now().Add(bound)
	for {
		live, err := j.liveReplicas(ctx)
		if err != nil {
			return fmt.Errorf("garbage collection: listing replicas: %w", err)
		}
		var missing []string
		for _, id := range live {
			b, err := j.drv.GetContent(ctx, gcAckPath(id))
			if err != nil || strings.TrimSpace(string(b)) != token {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("garbage collection gave up: replicas %s did not turn read-only within %s; nothing was changed, try again",
				strings.Join(missing, ", "), bound.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(journalPoll / 2):
		}
	}
}

// remoteGC is a replica's side of another replica's GC: the token of
// the lease it turned read-only for ("" when none).
type remoteGC struct{ token string }

// followLease turns this replica read-only while another holds the GC
// lease (waiting for its writes in flight, as a local GC would), then
// acknowledges; it reopens when the lease is gone or has expired.
func (s *Server) followLease(ctx context.Context, st *remoteGC) {
	j := s.extras.journal
	l, err := j.readLease(ctx)
	if err != nil {
		return // the store did not answer: try again next poll
	}
	held := l.valid(time.Now()) && l.Holder != j.id
	switch {
	case held && st.token != l.Token:
		if st.token == "" {
			if err := s.extras.gate.close(ctx, "garbage collection on replica "+l.Holder, s.opts.GCDrainTimeout); err != nil {
				s.log.Warn("turning read-only for garbage collection", "holder", l.Holder, "err", err)
				return // not acknowledged: the GC gives up
			}
		}
		st.token = l.Token
		if err := j.drv.PutContent(ctx, gcAckPath(j.id), []byte(l.Token)); err != nil {
			s.log.Warn("acknowledging garbage collection", "err", err)
		}
	case !held && st.token != "":
		st.token = ""
		s.extras.gate.open()
		_ = j.drv.Delete(ctx, gcAckPath(j.id))
	}
}
