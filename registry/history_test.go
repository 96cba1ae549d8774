package registry

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/config"
)

// historyLines parses every line of <dir>/events.jsonl strictly: each is
// an event, counts, a journal entry's pulls or a journal mark; a line of
// another shape, or a last line without its newline, fails the test. It
// returns the lines by kind.
func historyLines(t *testing.T, dir string) (events []Event, counts map[string]int64, lines int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Fatalf("events.jsonl ends in a torn line: %q", b[max(0, len(b)-80):])
	}
	counts = map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(nil, 64<<20)
	for n := 1; sc.Scan(); n++ {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("events.jsonl line %d does not parse: %v: %q", n, err, sc.Text())
		}
		switch {
		case r.Counts != nil:
			eachCount(r.Counts, func(_, c int64) { counts[r.Repo+":"+r.Ref] += c })
		case r.Action == "pull":
			counts[r.Repo+":"+pullRef(r.Tag, r.Digest)]++
		case r.Action != "":
			events = append(events, r.Event)
		case r.Pulls != nil:
			for _, p := range r.Pulls {
				counts[p.Repo+":"+p.Ref] += p.N
			}
		case r.Journal == 0:
			t.Fatalf("events.jsonl line %d is of no known kind: %q", n, sc.Text())
		}
		lines++
	}
	return events, counts, lines
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// TestHistoryMillionPulls is #21's acceptance 2 for the history: a
// million pulls of 10,000 repositories (three tags each) over the last 30
// days, recorded through the library as the registry does, leave at most
// 50 MB on disk, and a restarted registry reads it back in a fraction of
// a second with every pull counted.
func TestHistoryMillionPulls(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a million pulls take seconds")
	}
	dir := t.TempDir()
	l := openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	const repos, pulls = 10_000, 1_000_000
	now := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	var peak int64 // the file's largest size, between compactions
	for i := range pulls {
		// In time order, as pulls come; repositories and tags at random.
		at := now.Add(-30 * 24 * time.Hour).Add(time.Duration(i) * (30 * 24 * time.Hour / pulls))
		r := rng.IntN(repos)
		repo := fmt.Sprintf("team-%03d/service-%05d", r%100, r)
		l.AddPull(repo, fmt.Sprintf("v1.%d", rng.IntN(3)), at)
		if i%10_000 == 0 {
			l.mu.Lock()
			peak = max(peak, l.size)
			l.mu.Unlock()
		}
	}
	recorded := time.Since(start)
	if err := l.Compact(t.Context()); err != nil { // after the one under way
		t.Fatal(err)
	}

	start = time.Now()
	l2 := openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	opened := time.Since(start)
	var total int64
	for _, refs := range l2.hist.pulls {
		for _, cs := range refs {
			for _, c := range cs {
				total += int64(c.n)
			}
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pulls recorded in %s; history %.1f MB compacted, %.1f MB at most between compactions; reopened in %s",
		pulls, recorded.Round(time.Millisecond), float64(fi.Size())/1e6, float64(peak)/1e6, opened.Round(time.Millisecond))
	if fi.Size() > 50e6 || peak > 50e6 {
		t.Errorf("the history takes %d bytes (%d at most between compactions), more than 50 MB", fi.Size(), peak)
	}
	if total != pulls {
		t.Errorf("after the restart %d pulls are counted, want %d", total, pulls)
	}
	_, counts, _ := historyLines(t, dir)
	var inFile int64
	for _, n := range counts {
		inFile += n
	}
	if inFile != pulls {
		t.Errorf("the file counts %d pulls, want %d", inFile, pulls)
	}
	// Hourly for the last week, daily before.
	st := l2.Pulls("team-000/service-00000", "")
	if len(st.Hours) != 7*24 || len(st.Days) != 90 {
		t.Errorf("stats: %d hours, %d days; want 168 and 90", len(st.Hours), len(st.Days))
	}
}

// TestHistoryKeepsByAgeAndCount: events go past the age or the count of
// events_keep, in memory and in the file; pulls go past the age, and
// are counted per day beyond the last week.
func TestHistoryKeepsByAgeAndCount(t *testing.T) {
	dir := t.TempDir()
	keep := config.EventsKeep{Age: 30 * 24 * time.Hour, Count: 5}
	l := openEventLog(dir, keep, 0, testLog(t))
	now := time.Now().UTC()
	for i := range 3 { // too old
		l.Add(Event{Time: now.Add(-31 * 24 * time.Hour).Add(time.Duration(i) * time.Minute), Action: "push", Repo: "old", Tag: fmt.Sprint(i)})
	}
	for i := range 8 { // the 5 newest stay
		l.Add(Event{Time: now.Add(-time.Duration(8-i) * time.Minute), Action: "push", Repo: "new", Tag: fmt.Sprint(i)})
	}
	l.AddPull("app", "v1", now.Add(-40*24*time.Hour)) // too old
	l.AddPull("app", "v1", now.Add(-10*24*time.Hour)) // per day
	l.AddPull("app", "v1", now.Add(-10*24*time.Hour+time.Hour))
	l.AddPull("app", "v1", now.Add(-time.Hour)) // per hour
	l.AddPull("app", "v1", now)
	l.AddPull("app", "v1", now)

	tags := func(evs []Event) string {
		var s []string
		for _, e := range evs {
			s = append(s, e.Repo+":"+e.Tag)
		}
		return strings.Join(s, " ")
	}
	check := func(when string, l *EventLog) {
		t.Helper()
		evs, n := l.Page(0, 100, nil)
		if want := "new:7 new:6 new:5 new:4 new:3"; n != 5 || tags(evs) != want {
			t.Errorf("%s: %d events %s, want %s", when, n, tags(evs), want)
		}
		st := l.Pulls("app", "v1")
		if st.Total != 5 || st.Hours[len(st.Hours)-1].Pulls != 2 || st.Hours[len(st.Hours)-2].Pulls != 1 {
			t.Errorf("%s: %d pulls counted (this hour %d, the one before %d), want 5 (2, 1)", when, st.Total, st.Hours[len(st.Hours)-1].Pulls, st.Hours[len(st.Hours)-2].Pulls)
		}
		day := now.Add(-10 * 24 * time.Hour).Truncate(24 * time.Hour)
		var got int64
		for _, d := range st.Days {
			if d.Start.Equal(day) {
				got += d.Pulls
			}
		}
		if want := int64(2); day.Add(24*time.Hour).After(now.Add(-10*24*time.Hour+time.Hour)) && got != want {
			t.Errorf("%s: %d pulls on %s, want %d", when, got, day.Format(time.DateOnly), want)
		}
	}
	check("before compaction", l)
	if err := l.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("after compaction", l)
	evs, counts, lines := historyLines(t, dir)
	if want := "new:3 new:4 new:5 new:6 new:7"; tags(evs) != want {
		t.Errorf("the compacted file holds the events %s, want %s", tags(evs), want)
	}
	if counts["app:v1"] != 5 || lines != 6 { // 5 events, 1 counts line
		t.Errorf("the compacted file counts %d pulls in %d lines, want 5 in 6", counts["app:v1"], lines)
	}
	check("after a restart", openEventLog(dir, keep, 0, testLog(t)))
}

// TestHistoryCompactionKeepsAppends: what is appended while a compaction
// runs (between its read and its rename) is in the new file and in memory.
func TestHistoryCompactionKeepsAppends(t *testing.T) {
	dir := t.TempDir()
	l := openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	now := time.Now()
	for i := range 100 {
		l.AddPull(fmt.Sprintf("r%d", i%10), "v1", now)
	}
	l.Add(Event{Action: "push", Repo: "before", Tag: "v1"})
	during := 0
	l.afterRead = func() {
		for range 50 {
			l.AddPull("r0", "v1", now)
			during++
		}
		l.Add(Event{Action: "push", Repo: "during", Tag: "v1"})
	}
	if err := l.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	l.afterRead = nil
	l.AddPull("r0", "v1", now)
	l.Add(Event{Action: "push", Repo: "after", Tag: "v1"})
	for _, lg := range []*EventLog{l, openEventLog(dir, config.EventsKeep{}, 0, testLog(t))} {
		if got := lg.Pulls("r0", "v1").Total; got != 10+50+1 {
			t.Errorf("r0:v1 counts %d pulls, want 61", got)
		}
		var all int64
		for i := range 10 {
			all += lg.Pulls(fmt.Sprintf("r%d", i), "").Total
		}
		if all != 100+50+1 {
			t.Errorf("%d pulls counted, want 151", all)
		}
		if evs, n := lg.Page(0, 10, nil); n != 3 || evs[0].Repo != "after" || evs[1].Repo != "during" || evs[2].Repo != "before" {
			t.Errorf("events %+v", evs)
		}
	}
	historyLines(t, dir)
	if tmps, _ := filepath.Glob(filepath.Join(dir, "events.jsonl.*.tmp")); len(tmps) > 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

// TestHistoryCompactsBySize: the file is compacted once it has grown by
// the compact size past the last compaction's output, in the background,
// and stays bounded however many pulls it counts.
func TestHistoryCompactsBySize(t *testing.T) {
	dir := t.TempDir()
	const compact = 64 << 10
	l := openEventLog(dir, config.EventsKeep{}, compact, testLog(t))
	now := time.Now()
	var peak int64
	compactions := 0
	for i := range 50_000 {
		l.AddPull(fmt.Sprintf("r%d", i%20), "v1", now)
		if i%500 == 499 { // 500 pulls: about 22 KB
			l.mu.Lock()
			if l.compacting {
				compactions++
			}
			for l.compacting {
				l.cond.Wait()
			}
			peak = max(peak, l.size)
			l.mu.Unlock()
		}
	}
	if err := l.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "events.jsonl"))
	t.Logf("50,000 pulls (about 2.2 MB of lines): %d compactions seen, the file peaked at %d bytes, %d after the last", compactions, peak, fi.Size())
	if peak > compact+32<<10 || fi.Size() > 2<<10 || compactions < 20 {
		t.Errorf("the file peaked at %d bytes and holds %d after %d compactions: not bounded by the compact size (%d)", peak, fi.Size(), compactions, compact)
	}
	if got := openEventLog(dir, config.EventsKeep{}, 0, testLog(t)).Pulls("r0", "").Total; got != 2500 {
		t.Errorf("r0 counts %d pulls, want 2500", got)
	}
}

// TestHistoryTornLineAndOldFile: a file from before pulls were counted
// (a line per pull) is counted, and compacted into counts; a torn last
// line (a process killed while appending) is cut off at the next start,
// and an offline tool's line after one starts a line of its own.
func TestHistoryTornLineAndOldFile(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UTC()
	var old strings.Builder
	for i := range 1000 {
		b, _ := json.Marshal(Event{Time: now.Add(-time.Duration(i) * time.Minute), Action: "pull", Repo: "legacy/app", Tag: "v1", Digest: digest.Digest("sha256:" + strings.Repeat("a", 64)), User: "u", Addr: "10.0.0.1:5555", Via: "registry"})
		old.Write(append(b, '\n'))
	}
	b, _ := json.Marshal(Event{Time: now, Action: "push", Repo: "legacy/app", Tag: "v1"})
	old.Write(append(b, '\n'))
	old.WriteString(`{"time":"2025-01-01T00:00:00Z","action":"pu`) // torn
	p := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(p, []byte(old.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	l := openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	if got := l.Pulls("legacy/app", "v1").Total; got != 1000 {
		t.Errorf("the old file counts %d pulls, want 1000", got)
	}
	historyLines(t, dir) // the torn line is gone
	l.Add(Event{Action: "push", Repo: "legacy/app", Tag: "v2"})
	if err := l.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	evs, counts, lines := historyLines(t, dir)
	if len(evs) != 2 || counts["legacy/app:v1"] != 1000 || lines != 3 {
		t.Errorf("compacted: %d events, %d pulls, %d lines; want 2, 1000, 3", len(evs), counts["legacy/app:v1"], lines)
	}

	// A torn line again, then an offline GC's event.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"repo":"legacy/app","ref":"v1","cou`)
	f.Close()
	if err := recordOffline(dir, Event{Action: "gc", Via: "offline"}); err != nil {
		t.Fatal(err)
	}
	l = openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	if evs, n := l.Page(0, 10, nil); n != 3 || evs[0].Action != "gc" {
		t.Errorf("after an offline gc: %d events %+v", n, evs)
	}
}

// TestJournalPullsCountedOnce: another replica's pulls (counted, or one
// event per pull from an earlier version) are added to the counts, not
// as events, and a restarted replica starts its journal reading after the
// newest entry it counted.
func TestJournalPullsCountedOnce(t *testing.T) {
	dir := t.TempDir()
	l := openEventLog(dir, config.EventsKeep{}, 0, testLog(t))
	s := &Server{extras: &extras{events: l}}
	now := time.Now()
	at := now.Add(-time.Second).Truncate(time.Microsecond)
	s.applyJournal(t.Context(), journalEntry{Replica: "b", at: at, Pulls: []journalPull{
		{Repo: "app", Ref: "v1", Hour: hourOf(now), N: 7}, {Repo: "app", Ref: "v2", Hour: hourOf(now) - 1, N: 2}}})
	s.applyJournal(t.Context(), journalEntry{Replica: "c", at: at.Add(-time.Millisecond), Events: []Event{
		{Time: now, Action: "pull", Repo: "app", Tag: "v1"}, {Time: now, Action: "pull", Repo: "app", Digest: digest.Digest("sha256:" + strings.Repeat("b", 64))}}})
	if _, n := l.Page(0, 10, nil); n != 0 {
		t.Errorf("pulls of other replicas made %d events", n)
	}
	for _, lg := range []*EventLog{l, openEventLog(dir, config.EventsKeep{}, 0, testLog(t))} {
		if v1, v2, all := lg.Pulls("app", "v1").Total, lg.Pulls("app", "v2").Total, lg.Pulls("app", "").Total; v1 != 8 || v2 != 2 || all != 11 {
			t.Errorf("counted v1 %d, v2 %d, app %d; want 8, 2, 11", v1, v2, all)
		}
		if got := lg.syncedUntil(); !got.After(at) || got.After(at.Add(time.Microsecond)) {
			t.Errorf("synced until %s, want just after the newest entry counted, %s", got, at)
		}
	}
	if err := l.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := openEventLog(dir, config.EventsKeep{}, 0, testLog(t)).syncedUntil(); !got.After(at) {
		t.Errorf("after compaction: synced until %s, want after %s", got, at)
	}
}
