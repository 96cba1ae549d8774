package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// listCounter counts the driver's List calls.
type listCounter struct {
	storagedriver.StorageDriver
	lists atomic.Int64
}

func (c *listCounter) List(ctx context.Context, p string) ([]string, error) {
	c.lists.Add(1)
	return c.StorageDriver.List(ctx, p)
}

// plant writes an entry of replica "other" as if written at t.
func plant(t *testing.T, drv storagedriver.StorageDriver, at time.Time, repo string) {
	t.Helper()
	b, _ := json.Marshal(journalEntry{Replica: "other", Repo: repo})
	name := fmt.Sprintf("%020d-other-%06d.json", at.UnixNano(), at.Nanosecond()%1_000_000)
	if err := drv.PutContent(context.Background(), path.Join(minuteDir(at), name), b); err != nil {
		t.Fatal(err)
	}
}

// The journal's minute directories: a replica's poll reads only the last
// two minutes (two LISTs, however long the journal), a starting replica
// reads it all, and directories past journalKeep are removed.
func TestJournalMinuteDirs(t *testing.T) {
	ctx := context.Background()
	drv := &listCounter{StorageDriver: inmemory.New()}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A fixed clock, 30s into a minute: no minute turns during the test.
	now := time.Now().Truncate(time.Minute).Add(30 * time.Second)
	clock := func() time.Time { return now }
	for i := range 300 { // a busy day's worth of old entries
		plant(t, drv, now.Add(-time.Duration(5+i)*time.Minute), fmt.Sprintf("old/%d", i))
	}
	plant(t, drv, now.Add(-journalKeep-time.Hour), "expired")
	plant(t, drv, now.Add(-61*time.Second), "late") // the previous minute (a slow clock)

	applied := func(j *journal, all bool) map[string]bool {
		t.Helper()
		got := map[string]bool{}
		if err := j.poll(ctx, all, time.Time{}, func(e journalEntry) { got[e.Repo] = true }); err != nil {
			t.Fatal(err)
		}
		return got
	}

	// A starting replica reads every directory but the expired one, which goes.
	start := newJournal(drv, nil, "start", log)
	start.now = clock
	got := applied(start, true)
	if len(got) != 301 || !got["late"] || !got["old/299"] || got["expired"] {
		t.Fatalf("a starting replica applied %d entries (late %v, old/299 %v, expired %v), want 301 without the expired one",
			len(got), got["late"], got["old/299"], got["expired"])
	}
	if _, err := drv.List(ctx, minuteDir(now.Add(-journalKeep-time.Hour))); !isPathNotFound(err) {
		t.Fatalf("the expired minute directory is still there (err %v)", err)
	}

	// A running replica: the last two minutes only, in two LISTs.
	run := newJournal(drv, nil, "run", log)
	run.now, run.pruned = clock, now
	drv.lists.Store(0)
	got = applied(run, false)
	if len(got) != 1 || !got["late"] {
		t.Fatalf("a running replica's poll applied %v, want only the entry of the previous minute", got)
	}
	if n := drv.lists.Load(); n != 2 {
		t.Fatalf("a running replica's poll made %d LISTs, want 2 (this minute and the previous)", n)
	}

	// A change through another replica is seen at the next poll, once.
	other := newJournal(drv, nil, "other2", log)
	other.now = clock
	other.publish(ctx, journalEntry{Repo: "fresh"})
	if got = applied(run, false); len(got) != 1 || !got["fresh"] {
		t.Fatalf("after a publish elsewhere the poll applied %v, want fresh only", got)
	}
	if got = applied(run, false); len(got) != 0 {
		t.Fatalf("a second poll applied %v again", got)
	}
	// Its own entries are never applied.
	run.publish(ctx, journalEntry{Repo: "mine"})
	if got = applied(run, false); len(got) != 0 {
		t.Fatalf("a replica applied its own entry: %v", got)
	}
}
