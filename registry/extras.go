package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/registry/cluster"
)

// A server's catalog, history, change bookkeeping and data-dir locks,
// wired to its one storage driver.

type extras struct {
	catalog *Catalog
	events  *EventLog
	changes *changes // what follows a manifest change (changes.go)
	journal *journal // the shared store's change journal; nil on a store of one's own
	member  *member  // this replica's part in the cluster (gclease.go); nil likewise
	gate    *gate
	dataDir string
	lock    *os.File // <data>/.lock, locked shared while writes run (see gate)
	// serveLock is <data>/.serve.lock, locked shared until Serve returns.
	serveLock *os.File
}

// newExtras opens the catalog, event log and data-dir lock of a server.
// The lock file is closed when the Server is garbage collected. A catalog
// that cannot be opened fails the server's start (a nil catalog would fail
// the UI later).
func newExtras(s *Server) (*extras, error) {
	if s.store == nil {
		return nil, errors.New("registry: no storage")
	}
	cat, err := newCatalog(context.Background(), s.store.driver, filepath.Join(s.opts.DataDir, "catalog-cache.jsonl"))
	if err != nil {
		return nil, err
	}
	e := &extras{catalog: cat, gate: newGate(), dataDir: s.opts.DataDir}
	cat.gate = e.gate
	cat.log = s.log
	// The index is kept across restarts (catalog_snapshot.go). On a shared
	// store a snapshot is used while the journal still holds what the
	// other replicas changed since.
	store := s.store.spec
	store.Redirect = false
	var maxAge time.Duration
	if store.Shared() {
		maxAge = journalKeep - time.Hour
	}
	cat.persistIndex(s.opts.DataDir, store.String(), maxAge)
	cat.descriptors = s.descriptors
	cat.watchOffline(s.opts.DataDir)
	keep, _ := config.ParseEventsKeep(s.opts.EventsKeep) // checked by New
	e.events = openEventLog(s.opts.DataDir, keep, s.opts.EventsCompactSize, s.log)
	e.changes = &changes{drv: s.store.driver, idx: s.referrerIndex(), catalog: cat, events: e.events, log: s.log, descriptors: s.descriptors}
	if s.store.spec.Shared() {
		id, err := replicaID(s.opts.DataDir)
		if err != nil {
			return nil, err
		}
		s3, err := s.store.cas()
		if err != nil {
			return nil, err
		}
		e.member = &member{s3: s3, kick: make(chan struct{}, 1), instance: randomID()}
		e.member.answered.Store(time.Now().UnixNano()) // silence counts from the start
		e.gate.admit = e.member.writable
		if s.redis != nil {
			e.member.redis = cluster.NewRedis(redisClient(s.redis), s.redis.Addr)
		}
		e.journal = newJournal(s.store.driver, s3, id, s.log)
		e.changes.journal = e.journal
	}
	cat.onChange = e.changes
	if f, err := os.OpenFile(filepath.Join(s.opts.DataDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644); err == nil {
		e.lock = f
		e.gate.lock = f
		runtime.AddCleanup(s, func(f *os.File) { f.Close() }, f)
	}
	// <data>/.serve.lock, held shared for the server's life: ServerRunning
	// tells an offline tool that a server uses the data dir.
	if f, err := os.OpenFile(filepath.Join(s.opts.DataDir, ".serve.lock"), os.O_RDWR|os.O_CREATE, 0o644); err == nil {
		if syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) == nil {
			e.serveLock = f // closed when Serve returns
			runtime.AddCleanup(s, func(f *os.File) { f.Close() }, f)
		} else {
			f.Close()
		}
	}
	return e, nil
}

// keepIndex keeps the catalog's index saved while the server serves
// (Catalog.keepIndex); the function it returns stops that once the last
// request is done, and saves the index one last time (a clean stop).
func (s *Server) keepIndex(ctx context.Context) (stop func()) {
	cat := s.extras.catalog
	kctx, cancel := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		cat.keepIndex(kctx)
	}()
	return func() {
		cancel()
		<-kept
		if err := cat.SaveIndex(); err != nil {
			s.log.Warn("saving the catalog index", "err", err)
		}
	}
}

// ServerRunning reports whether a labreg server (in any process) has the
// data dir open: it holds <data>/.serve.lock shared while it lives.
func ServerRunning(dataDir string) bool {
	f, err := os.Open(filepath.Join(dataDir, ".serve.lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// Catalog returns the in-process view of this server's storage that the
// web UI reads.
func (s *Server) Catalog() *Catalog { return s.extras.catalog }

// Events returns this server's push/pull/delete history.
func (s *Server) Events() *EventLog { return s.extras.events }

// DataDir returns the data directory.
func (s *Server) DataDir() string { return s.opts.DataDir }
