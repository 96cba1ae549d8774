package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/labreg/labreg/registry/cluster"
)

// Replicas on one shared store keep their in-memory state (the catalog
// index, the event history, distribution's blob descriptor cache) in step
// through a change journal in the store itself: every change made through
// a replica (changes.go, GC) is written as one small object under
// journalPath, in a directory per minute of its writer's clock, named so
// that names sort by time, and then the change signal (signalPath) is
// rewritten. Every replica reads the signal with If-None-Match: while
// nothing changes that is one GET answered 304 (no LIST), every
// journalPoll after a change, backing off to journalIdlePoll when idle.
// When it has changed, the replica lists the current and the previous
// minute's directory (two small LISTs however long the journal is) and
// applies the entries of the other replicas: it refreshes the repository
// in its catalog index, adds the event to its history, and after a GC
// elsewhere drops what it cached. A replica that starts reads every
// directory once. Directories older than journalKeep are deleted by
// whichever replica sees them (pruneEvery). Nothing but the store is
// needed (no Redis, no peer list). Clocks may differ by up to a minute: a
// late writer's entry is still in the previous minute's directory.
//
// What an idle replica asks of the store: one GET a journalIdlePoll, one
// PUT a heartbeatEvery (gclease.go), one LIST a pruneEvery: at S3
// standard prices ($0.0004 per 1,000 GETs, $0.005 per 1,000 PUTs and
// LISTs) about $1.50 a month.
//
// The referrer index and the sha512 aliases need no journal: they are
// read from the store on every request. Pulls are batched and counted: a
// replica writes the pulls it served in one entry a second at most, one
// count per repository, reference and hour (one object per pull would
// cost the store more than the history is worth), and the others add the
// counts to their own (bounded) history, which records the entry's time
// so that a restarted replica does not count it twice.

// journalPoll is how often a replica reads the change signal after a
// change; it doubles up to journalIdlePoll while nothing changes. A change
// made through another replica is seen within about journalIdlePoll plus
// two store round trips.
const (
	journalPoll     = 250 * time.Millisecond
	journalIdlePoll = time.Second
)

// journalKeep is how long entries stay in the journal. A replica that
// starts imports the events of the entries still there.
const journalKeep = 24 * time.Hour

// pruneEvery is how often a replica looks for minute directories older
// than journalKeep.
const pruneEvery = 10 * time.Minute

// journalEntry is one change.
type journalEntry struct {
	Replica string `json:"replica"`
	Repo    string `json:"repo,omitempty"`
	// Event is the change as the history records it.
	Event *Event `json:"event,omitempty"`
	// Pulls are the pulls served, counted (one entry a second at most).
	Pulls []journalPull `json:"pulls,omitempty"`
	// Events are pull events, one per pull, from a replica of an earlier
	// version: counted like Pulls.
	Events []Event `json:"events,omitempty"`
	// GC: a garbage collection removed Blobs (digests) from the store.
	GC    bool     `json:"gc,omitempty"`
	Blobs []string `json:"blobs,omitempty"`

	at time.Time // when it was written (its name), set by poll
}

// journal writes and tails the change journal of one replica.
type journal struct {
	drv storagedriver.StorageDriver
	sig cluster.Signal // the store, for the change signal
	id  string         // this replica (see replicaID)
	log *slog.Logger
	seq atomic.Uint64
	now func() time.Time // time.Now; tests set their own clock

	bumps chan struct{} // asks the signaller for a signal (cap 1)
	// pollMu serialises polls (the poll loop, a reopening follower);
	// synced: a poll has read the whole journal once.
	pollMu sync.Mutex
	synced bool
	sigVer string // the signal's version last read (poll loop only)

	mu      sync.Mutex
	seen    map[string]bool       // entry names applied or skipped
	pending map[journalPull]int64 // pulls not written yet (N 0), counted (see queuePull)
	pruned  time.Time             // last look for old minute directories (poll's goroutine only)
}

// maxPendingPulls bounds the counts a replica keeps between two flushes
// (a second): beyond it, pulls of further repositories and references
// are counted in this replica's history only.
const maxPendingPulls = 20_000

// queuePull counts a pull of repo's ref in hour for the next flush.
func (j *journal) queuePull(repo, ref string, hour int64) {
	k := journalPull{Repo: repo, Ref: ref, Hour: hour}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.pending[k]; ok || len(j.pending) < maxPendingPulls {
		j.pending[k]++
	}
}

// flush writes the queued pull counts as one entry.
func (j *journal) flush(ctx context.Context) {
	j.mu.Lock()
	pending := j.pending
	j.pending = map[journalPull]int64{}
	j.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	batch := make([]journalPull, 0, len(pending))
	for k, n := range pending {
		k.N = n
		batch = append(batch, k)
	}
	sort.Slice(batch, func(a, b int) bool {
		x, y := batch[a], batch[b]
		if x.Repo != y.Repo {
			return x.Repo < y.Repo
		}
		if x.Ref != y.Ref {
			return x.Ref < y.Ref
		}
		return x.Hour < y.Hour
	})
	j.publish(ctx, journalEntry{Pulls: batch})
}

// journalPath is the directory of the journal.
func journalPath() string { return path.Join(labregRoot, "journal") }

// minuteDir is the journal directory of the entries written in t's minute.
func minuteDir(t time.Time) string {
	return path.Join(journalPath(), fmt.Sprintf("%010d", t.Unix()/60))
}

// dirTime is the start of a minute directory's minute.
func dirTime(dir string) (time.Time, bool) {
	var m int64
	base := path.Base(dir)
	if _, err := fmt.Sscanf(base, "%d", &m); err != nil || len(base) != 10 {
		return time.Time{}, false
	}
	return time.Unix(m*60, 0), true
}

// replicaID is this data dir's replica name, kept in <data>/replica-id
// so that a restarted replica recognises its own journal entries.
func replicaID(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "replica-id")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) == 16 {
		return strings.TrimSpace(string(b)), nil
	}
	id := randomID() // crypto/rand.Read never fails (go1.24)
	if err := writeFileAtomic(p, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("recording the replica id: %w", err)
	}
	return id, nil
}

func newJournal(drv storagedriver.StorageDriver, sig cluster.Signal, id string, log *slog.Logger) *journal {
	return &journal{drv: drv, sig: sig, id: id, log: log, now: time.Now, seen: map[string]bool{}, pending: map[journalPull]int64{}, bumps: make(chan struct{}, 1)}
}

// signalPath is the change signal: rewritten after every journal entry.
func signalPath() string { return path.Join(labregRoot, "signal") }

// signal rewrites the change signal now.
func (j *journal) signal(ctx context.Context) {
	if err := j.sig.Put(context.WithoutCancel(ctx), signalPath(), signalContent(j.id)); err != nil {
		j.log.Warn("writing the change signal", "err", err)
	}
}

// signaller rewrites the change signal after entries are written, once
// for as many entries as were written while it wrote, until ctx ends.
func (j *journal) signaller(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-j.bumps:
			j.signal(ctx)
		}
	}
}

// publish writes e to the journal. A failure is logged: the change itself
// is made; other replicas see it at their next full reload.
func (j *journal) publish(ctx context.Context, e journalEntry) {
	e.Replica = j.id
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	now := j.now()
	name := fmt.Sprintf("%020d-%s-%06d.json", now.UnixNano(), j.id, j.seq.Add(1)%1_000_000)
	j.mu.Lock()
	j.seen[name] = true
	j.mu.Unlock()
	if err := j.drv.PutContent(context.WithoutCancel(ctx), path.Join(minuteDir(now), name), b); err != nil {
		j.log.Warn("writing the change journal", "err", err)
		return
	}
	select { // after the entry: a reader that sees the signal finds it
	case j.bumps <- struct{}{}:
	default:
	}
}

// entryTime is when the entry name was written.
func entryTime(name string) (time.Time, bool) {
	i := strings.IndexByte(name, '-')
	if i != 20 {
		return time.Time{}, false
	}
	var ns int64
	if _, err := fmt.Sscanf(name[:i], "%d", &ns); err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// list returns the journal's entry paths, sorted: every minute
// directory's when all is true, else the current and the previous
// minute's. Old directories are pruned on the way (any replica prunes).
func (j *journal) list(ctx context.Context, all bool) ([]string, error) {
	now := j.now()
	var dirs []string
	if all || now.Sub(j.pruned) >= pruneEvery {
		listed, err := j.drv.List(ctx, journalPath())
		if isPathNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		j.pruned = now
		for _, d := range listed {
			t, ok := dirTime(d)
			if ok && now.Sub(t) > journalKeep+time.Minute {
				_ = j.drv.Delete(ctx, d)
				continue
			}
			if all {
				dirs = append(dirs, d)
			}
		}
	}
	if !all {
		dirs = []string{minuteDir(now.Add(-time.Minute)), minuteDir(now)}
	}
	var paths []string
	for _, d := range dirs {
		p, err := j.drv.List(ctx, d)
		if isPathNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		paths = append(paths, p...)
	}
	sort.Slice(paths, func(a, b int) bool { return path.Base(paths[a]) < path.Base(paths[b]) })
	return paths, nil
}

// poll applies the entries not seen yet, oldest first, through apply:
// of the whole journal when all is true, else of the last two minutes.
// since: entries written before it are marked seen without being applied
// (zero: apply all).
func (j *journal) poll(ctx context.Context, all bool, since time.Time, apply func(journalEntry)) error {
	paths, err := j.list(ctx, all)
	if err != nil {
		return err
	}
	now := j.now()
	for _, p := range paths {
		name := path.Base(p)
		j.mu.Lock()
		done := j.seen[name]
		j.seen[name] = true
		j.mu.Unlock()
		t, ok := entryTime(name)
		if done || !ok || t.Before(since) || strings.Contains(name, "-"+j.id+"-") {
			continue
		}
		b, err := j.drv.GetContent(ctx, p)
		if err != nil {
			if !isPathNotFound(err) { // not pruned meanwhile: read it next poll
				j.mu.Lock()
				delete(j.seen, name)
				j.mu.Unlock()
			}
			continue
		}
		var e journalEntry
		if json.Unmarshal(b, &e) != nil || e.Replica == j.id {
			continue
		}
		e.at = t
		apply(e)
	}
	// Forget entries older than the directories a poll reads.
	j.mu.Lock()
	for name := range j.seen {
		if t, ok := entryTime(name); !ok || now.Sub(t) > 3*time.Minute {
			delete(j.seen, name)
		}
	}
	j.mu.Unlock()
	return nil
}

// followJournal applies the other replicas' changes to this server until
// ctx ends, keeps its heartbeat, and follows other replicas' GC leases
// (gclease.go), each in its own goroutine: a slow store or a drain never
// holds up the heartbeat.
func (s *Server) followJournal(ctx context.Context) {
	j := s.extras.journal
	go j.signaller(ctx)
	go s.heartbeatLoop(ctx)
	go s.leaseLoop(ctx)
	defer s.leave(context.WithoutCancel(ctx))
	wait := journalPoll
	var flushed time.Time
	for {
		ver, changed, err := j.sig.Changed(ctx, signalPath(), j.sigVer)
		if ctx.Err() == nil {
			s.extras.member.polled(err)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("reading the change signal", "err", err)
		}
		j.sigVer = ver
		if changed || !j.isSynced() {
			s.extras.member.wake() // a lease is followed before the journal is read
			if err := s.syncJournal(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("reading the change journal", "err", err)
			}
			wait = journalPoll
		} else {
			wait = min(2*wait, journalIdlePoll)
		}
		if time.Since(flushed) >= time.Second {
			j.flush(ctx)
			flushed = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (j *journal) isSynced() bool {
	j.pollMu.Lock()
	defer j.pollMu.Unlock()
	return j.synced
}

// syncJournal applies the journal's entries this replica has not applied:
// the first time, of the whole journal (those newer than the newest event
// or counted journal entry in the history), then of the last two minutes.
func (s *Server) syncJournal(ctx context.Context) error {
	e := s.extras
	j := e.journal
	j.pollMu.Lock()
	defer j.pollMu.Unlock()
	all, since := !j.synced, time.Time{}
	if all {
		since = e.events.syncedUntil()
	}
	if err := j.poll(ctx, all, since, func(je journalEntry) { s.applyJournal(ctx, je) }); err != nil {
		return err
	}
	j.synced = true
	return nil
}

// heartbeatLoop writes this replica's heartbeat every heartbeatEvery
// (busyHeartbeat while another's GC lease is held; at once and then every
// second after a failure) until ctx ends.
func (s *Server) heartbeatLoop(ctx context.Context) {
	m := s.extras.member
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		every := heartbeatEvery
		if m.watch.Load() {
			every = busyHeartbeat
		}
		if sent := m.beatSent.Load(); sent == 0 || time.Since(time.Unix(0, sent)) >= every {
			if err := s.heartbeat(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("writing the heartbeat", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// applyJournal brings this replica up to date with one change made
// through another.
func (s *Server) applyJournal(ctx context.Context, je journalEntry) {
	e := s.extras
	switch {
	case je.GC:
		s.dropCachedBlobs(ctx, je.Blobs)
		e.catalog.Reload()
	case je.Repo != "":
		e.catalog.Touch(je.Repo, "")
	}
	if je.Event != nil {
		e.events.Add(*je.Event)
	}
	pulls := je.Pulls
	for _, ev := range je.Events {
		if ev.Action != "pull" {
			e.events.Add(ev)
			continue
		}
		pulls = append(pulls, journalPull{Repo: ev.Repo, Ref: pullRef(ev.Tag, ev.Digest), Hour: hourOf(ev.Time), N: 1})
	}
	var at int64
	if !je.at.IsZero() {
		at = je.at.UnixNano()
	}
	e.events.addPulls(pulls, at)
}

// afterGC drops the cached descriptors of the blobs a GC removed and
// tells the other replicas, which drop theirs and reload their index.
func (s *Server) afterGC(ctx context.Context, res *GCResult, ev Event) {
	ctx = context.WithoutCancel(ctx) // a GC stopped by its lease's loss included
	blobs := make([]string, len(res.Blobs))
	for i, b := range res.Blobs {
		blobs[i] = b.Digest.String()
	}
	s.dropCachedBlobs(ctx, blobs)
	if j := s.extras.journal; j != nil {
		j.publish(ctx, journalEntry{GC: true, Blobs: blobs, Event: &ev})
	}
}
