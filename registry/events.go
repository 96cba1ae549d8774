package registry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/config"
)

// Event is one entry of the registry's history.
type Event struct {
	Time time.Time `json:"time"`
	// Action is push, delete, gc, scrub, or a service action of the UI.
	// Pulls are counted (PullStats), not kept as events.
	Action string        `json:"action"`
	Repo   string        `json:"repo,omitempty"`
	Tag    string        `json:"tag,omitempty"`
	Digest digest.Digest `json:"digest,omitempty"`
	User   string        `json:"user,omitempty"`
	Addr   string        `json:"addr,omitempty"`
	// Via is "registry" for the /v2/ API, "ui" for the web UI.
	Via    string `json:"via,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// The history is one file, <data>/events.jsonl, of JSON lines:
//
//	{"time":"…","action":"push","repo":"r","tag":"v1",…}   an event
//	{"repo":"r","ref":"v1","counts":[489123,2,1,5]}         pulls of r:v1
//	{"pulls":[{"repo":"r","ref":"v1","hour":489123,"n":2}],"journal":…}
//	{"journal":1718000000000000000}
//
// Counts are hour, count pairs (hours since the Unix epoch; each after
// the first as the difference from the one before): a pull appends one
// pair, a compaction writes one line per repository and reference. A
// "pulls" line is one journal entry of another replica (journal.go), whose
// time (Unix ns) "journal" records: a restarted replica does not count it
// twice. An event line of action "pull" (written before pulls were
// counted) counts one pull.
//
// Every event and pull appends one line, in one write, before the client
// hears of success. Once the file has grown by max(compact size, its size
// after the last compaction), it is compacted in the background: what it
// holds up to that moment is read, the events older than the age or
// beyond the count of EventsKeep dropped, the pulls folded (pulls.go),
// written to a temporary file and fsynced; then, with appends held, the
// lines appended meanwhile are copied after it, and it is renamed over
// the file and the directory fsynced. A crash at any point leaves the old
// file or the new one, and either holds every line appended before the
// compaction began (less what the bounds drop). A process killed while
// appending can leave a torn last line: the next start cuts it off.
// Offline GC and scrub append too (recordOffline), holding <data>/.lock
// exclusively; a compaction holds it shared while it copies and renames,
// and tries again later when it cannot.

// defaultCompactSize is registry.events_compact_size's default.
const defaultCompactSize = 16 << 20

// compactRetry is how long a failed compaction waits to be tried again.
const compactRetry = time.Minute

// EventLog is the registry's history: events kept by age and count, pulls
// counted per hour (see above). It survives restarts.
type EventLog struct {
	path     string
	lockPath string // <data>/.lock
	keep     config.EventsKeep
	compact  int64 // registry.events_compact_size
	log      *slog.Logger
	now      func() time.Time

	mu   sync.Mutex
	cond *sync.Cond // signalled when a compaction ends
	f    *os.File   // the file, appending; nil when it cannot be opened
	size int64      // its size as this process wrote it
	base int64      // the size of the last compaction's output (0: none yet)
	hist history
	// compacting: a compaction runs; failedAt: the last one failed then.
	compacting bool
	failedAt   time.Time
	warnedAt   time.Time // the last append failure logged
	foldedAt   int64     // the hour the counters were last folded
	buf        []byte    // AddPull's line, reused
	// afterRead, when set (tests), runs between a compaction's read and
	// its copy of the lines appended meanwhile.
	afterRead func()
}

// history is what the file says: the events kept (oldest first), the
// pull counts, and the newest journal entry whose pulls are counted.
type history struct {
	events  []Event
	pulls   pullCounters
	journal int64
	scratch []int64 // apply's, reused
	// eventBytes and eventLines measure the event lines read (compactSize).
	eventBytes, eventLines int64
}

// compactSize estimates the size of h written by writeHistory.
func (h *history) compactSize() int64 {
	var n int64
	if h.eventLines > 0 {
		n = h.eventBytes / h.eventLines * int64(len(h.events))
	}
	for repo, refs := range h.pulls {
		for ref, cs := range refs {
			n += int64(len(repo)+len(ref)+32) + 8*int64(len(cs))
		}
	}
	return n
}

// record is one line of the file, of any kind.
type record struct {
	Event
	Ref     string        `json:"ref,omitempty"`
	Counts  []int64       `json:"counts,omitempty"`
	Pulls   []journalPull `json:"pulls,omitempty"`
	Journal int64         `json:"journal,omitempty"`
}

// journalPull is n pulls of repo's ref in one hour (since the Unix
// epoch): how replicas tell each other of pulls (journal.go).
type journalPull struct {
	Repo string `json:"repo"`
	Ref  string `json:"ref"`
	Hour int64  `json:"hour"`
	N    int64  `json:"n"`
}

// countsLine is a "counts" line.
type countsLine struct {
	Repo   string  `json:"repo"`
	Ref    string  `json:"ref"`
	Counts []int64 `json:"counts"`
}

// apply adds one line to h; nowHour decides which hours count per day.
func (h *history) apply(line []byte, keep config.EventsKeep, nowHour int64) bool {
	if repo, ref, counts, ok := parseCountsLine(line, h.scratch[:0]); ok { // the usual line
		h.scratch = counts
		r, f := string(repo), string(ref)
		eachCount(counts, func(hour, n int64) { h.pulls.add(r, f, hour, n, nowHour) })
		return true
	}
	var r record
	if json.Unmarshal(line, &r) != nil {
		return false
	}
	switch {
	case r.Counts != nil:
		eachCount(r.Counts, func(hour, n int64) { h.pulls.add(r.Repo, r.Ref, hour, n, nowHour) })
	case r.Action == "pull": // a line from before pulls were counted
		h.pulls.add(r.Repo, pullRef(r.Tag, r.Digest), hourOf(r.Time), 1, nowHour)
	case r.Action != "":
		h.events = append(h.events, r.Event)
		h.eventBytes += int64(len(line))
		h.eventLines++
		if len(h.events) > 2*keep.Count {
			h.events = append(h.events[:0], h.events[len(h.events)-keep.Count:]...)
		}
	}
	for _, p := range r.Pulls {
		h.pulls.add(p.Repo, p.Ref, p.Hour, p.N, nowHour)
	}
	h.journal = max(h.journal, r.Journal)
	return true
}

// trim drops what keep bounds out at now.
func (h *history) trim(keep config.EventsKeep, now time.Time) {
	oldest := now.Add(-keep.Age)
	i := max(0, len(h.events)-keep.Count)
	for i < len(h.events) && h.events[i].Time.Before(oldest) {
		i++
	}
	if i > 0 {
		h.events = append(h.events[:0:0], h.events[i:]...)
	}
	h.pulls.fold(hourOf(now), int64(keep.Age/time.Hour))
}

// pullRef is what a pull counts under: the tag, else the digest.
func pullRef(tag string, d digest.Digest) string {
	if tag != "" {
		return tag
	}
	return string(d)
}

// readHistory applies the lines of r to h and returns the length of its
// whole lines: what follows (a torn line) is not applied.
func readHistory(r io.Reader, h *history, keep config.EventsKeep, nowHour int64) (int64, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var whole int64
	var long []byte
	for {
		b, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull { // a line longer than the buffer
			long = append(long, b...)
			continue
		}
		line := b
		if long != nil {
			line = append(long, b...)
			long = nil
		}
		if err != nil {
			if err == io.EOF {
				return whole, nil
			}
			return whole, err
		}
		whole += int64(len(line))
		if len(bytes.TrimSpace(line)) > 0 {
			h.apply(line, keep, nowHour)
		}
	}
}

// openEventLog opens <data>/events.jsonl, cuts off a torn last line, and
// starts a compaction when the file holds max(compact size, what it
// would compact to) more than it would compact to.
// keep and compact are Options.EventsKeep and EventsCompactSize (zero:
// their defaults). A file that cannot be read starts an empty history
// (logged); one that cannot be opened for appending is tried again at
// each event.
func openEventLog(dataDir string, keep config.EventsKeep, compact int64, log *slog.Logger) *EventLog {
	if keep == (config.EventsKeep{}) {
		keep = config.DefaultEventsKeep
	}
	if compact <= 0 {
		compact = defaultCompactSize
	}
	l := &EventLog{path: filepath.Join(dataDir, "events.jsonl"), lockPath: filepath.Join(dataDir, ".lock"),
		keep: keep, compact: compact, log: log, now: time.Now, hist: history{pulls: pullCounters{}}}
	l.cond = sync.NewCond(&l.mu)
	now := l.now()
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		log.Warn("opening the history", "path", l.path, "err", err)
		return l
	}
	l.f = f
	whole, err := readHistory(f, &l.hist, keep, hourOf(now))
	if err != nil {
		log.Warn("reading the history", "path", l.path, "err", err)
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > whole {
		// A process killed while appending: the line was never
		// acknowledged, and the next append must start a line.
		if err := f.Truncate(whole); err != nil {
			log.Warn("cutting off a torn line of the history", "path", l.path, "err", err)
		}
	}
	l.size = whole
	l.hist.trim(keep, now)
	l.foldedAt = hourOf(now)
	// A file no larger than compacting it would make it waits, as if
	// just compacted, to grow by its size.
	l.base = min(whole, l.hist.compactSize())
	l.mu.Lock()
	l.maybeCompact()
	l.mu.Unlock()
	return l
}

// Add records e (Time defaults to now) and appends it to the file. A pull
// (Action "pull") is counted instead (see AddPull).
func (l *EventLog) Add(e Event) {
	if e.Time.IsZero() {
		e.Time = l.now().UTC()
	}
	if e.Action == "pull" {
		l.AddPull(e.Repo, pullRef(e.Tag, e.Digest), e.Time)
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hist.events = append(l.hist.events, e)
	if len(l.hist.events) > l.keep.Count+l.keep.Count/4 {
		l.hist.events = append(l.hist.events[:0:0], l.hist.events[len(l.hist.events)-l.keep.Count:]...)
	}
	l.append(append(b, '\n'))
}

// AddPull counts one pull of repo's ref (the tag or digest the client
// asked for) at t.
func (l *EventLog) AddPull(repo, ref string, t time.Time) {
	hour := hourOf(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = appendCountsLine(l.buf[:0], repo, ref, []int64{hour, 1})
	nowHour := hourOf(l.now())
	l.hist.pulls.add(repo, ref, hour, 1, nowHour)
	l.append(l.buf)
	if nowHour-l.foldedAt >= 24 { // memory stays bounded between compactions
		l.hist.pulls.fold(nowHour, int64(l.keep.Age/time.Hour))
		l.foldedAt = nowHour
	}
}

// addPulls counts the pulls of one journal entry of another replica,
// written at entry (Unix ns).
func (l *EventLog) addPulls(pulls []journalPull, entry int64) {
	if len(pulls) == 0 {
		return
	}
	b, err := json.Marshal(struct {
		Pulls   []journalPull `json:"pulls"`
		Journal int64         `json:"journal"`
	}{pulls, entry})
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	nowHour := hourOf(l.now())
	for _, p := range pulls {
		l.hist.pulls.add(p.Repo, p.Ref, p.Hour, p.N, nowHour)
	}
	l.hist.journal = max(l.hist.journal, entry)
	l.append(append(b, '\n'))
}

// append writes line to the file in one write, or not at all (a failed
// or short write is cut off again), then starts a compaction if the file
// has grown enough. l.mu is held.
func (l *EventLog) append(line []byte) {
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			l.warn("recording event", err)
			return
		}
		l.f = f
		if fi, err := f.Stat(); err == nil {
			l.size = fi.Size()
		}
	}
	n, err := l.f.Write(line)
	if err == nil && n < len(line) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(line))
	}
	if err != nil {
		if n > 0 {
			if fi, serr := l.f.Stat(); serr == nil {
				if terr := l.f.Truncate(fi.Size() - int64(n)); terr != nil {
					err = errors.Join(err, fmt.Errorf("cutting off the partial line: %w", terr))
				}
			}
		}
		l.warn("recording event", err)
		return
	}
	l.size += int64(n)
	l.maybeCompact()
}

// warn logs an append failure, once a minute at most (a full disk fails
// every pull). l.mu is held.
func (l *EventLog) warn(msg string, err error) {
	if now := l.now(); now.Sub(l.warnedAt) >= time.Minute {
		l.warnedAt = now
		l.log.Warn(msg, "path", l.path, "err", err)
	}
}

// Page returns up to limit events, newest first, skipping offset, keeping
// those for which keep (nil: all) is true; and how many matched in all.
// Events older than the history's age or beyond its count are left out.
func (l *EventLog) Page(offset, limit int, keep func(Event) bool) ([]Event, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := l.now().Add(-l.keep.Age)
	var out []Event
	n := 0
	for i := len(l.hist.events) - 1; i >= max(0, len(l.hist.events)-l.keep.Count); i-- {
		e := l.hist.events[i]
		if e.Time.Before(oldest) || keep != nil && !keep(e) {
			continue
		}
		if n >= offset && len(out) < limit {
			out = append(out, e)
		}
		n++
	}
	return out, n
}

// Pulls returns the pull history of repo's ref (a tag or digest), or of
// the whole repository when ref is "".
func (l *EventLog) Pulls(repo, ref string) PullStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	var series [][]cell
	for r, cs := range l.hist.pulls[repo] {
		if ref == "" || r == ref {
			series = append(series, cs)
		}
	}
	return statsOf(repo, ref, series, hourOf(l.now()), int64(l.keep.Age/time.Hour))
}

// syncedUntil is when the newest change of another replica this history
// holds was made: the newest event's time, or the newest journal entry
// whose pulls are counted (journal.go).
func (l *EventLog) syncedUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var t time.Time
	if n := len(l.hist.events); n > 0 {
		t = l.hist.events[n-1].Time
	}
	// An entry written at this very nanosecond is counted already.
	if j := time.Unix(0, l.hist.journal+1); l.hist.journal > 0 && j.After(t) {
		t = j
	}
	return t
}

// recordOffline appends e to the history of dataDir for an offline tool
// (gc, scrub), which holds <data>/.lock exclusively: no compaction
// replaces the file meanwhile. After a torn last line it starts a line
// of its own.
func recordOffline(dataDir string, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	p := filepath.Join(dataDir, "events.jsonl")
	if f, err := os.Open(p); err == nil {
		var last [1]byte
		if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
			if _, err := f.ReadAt(last[:], fi.Size()-1); err == nil && last[0] != '\n' {
				b = append([]byte{'\n'}, b...)
			}
		}
		f.Close()
	}
	return appendLine(p, append(b, '\n'))
}

// hooks sits in front of the registry: the runtime read-only gate refuses
// writes while it is closed, writes carry their actor for the history
// (pushes and deletes are recorded where the manifest changes:
// changes.go), and successful manifest pulls are counted here.
func (s *Server) hooks(next http.Handler) http.Handler {
	e := s.extras
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isWrite(r.Method) && strings.HasPrefix(r.URL.Path, "/v2/") {
			// A write the gate must stop (it outlasted GC's drain bound)
			// has its context cancelled with a *BusyError and its body
			// read cut short; the upload handler answers 503 for it.
			ctx, cancel := context.WithCancelCause(r.Context())
			rc := http.NewResponseController(w)
			id, ok, reason := e.gate.enter(func() {
				cancel(&BusyError{Reason: e.gate.reasonNow()})
				_ = rc.SetReadDeadline(time.Now())
			})
			if !ok {
				cancel(nil)
				writeUnavailable(w, reason)
				return
			}
			defer e.gate.leave(id)
			defer cancel(nil)
			a := Actor{Addr: r.RemoteAddr, Via: "registry"}
			if s.opts.Htpasswd != "" { // else the name is unverified
				a.User, _, _ = r.BasicAuth()
			}
			r = r.WithContext(WithActor(ctx, a))
			next.ServeHTTP(w, r)
			return
		}
		// Only manifest pulls are counted here; a blob request (the hot
		// path) costs one substring check.
		var p apiPath
		ok := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
		if ok {
			p, ok = parseAPIPath(r.URL.Path) // the same split ociAPI and its guard use
		}
		if !ok || p.kind != "manifests" {
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(&pullWriter{ResponseWriter: w, count: func() {
			now := time.Now()
			e.events.AddPull(p.repo, p.ref, now)
			if e.journal != nil {
				e.journal.queuePull(p.repo, p.ref, hourOf(now)) // the other replicas' histories
			}
		}}, r)
	})
}

// pullWriter counts a pull when its success status is sent, before any of
// its body: a client that has the manifest has been counted.
type pullWriter struct {
	http.ResponseWriter
	sent  bool
	count func()
}

func (w *pullWriter) WriteHeader(code int) {
	if !w.sent && code >= 200 {
		w.sent = true
		if code < 300 {
			w.count()
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *pullWriter) Write(b []byte) (int, error) {
	if !w.sent {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps the underlying response's fast path (see statusWriter).
func (w *pullWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.sent {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

func (w *pullWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *pullWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
