package registry

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Event is one entry of the registry's history.
type Event struct {
	Time time.Time `json:"time"`
	// Action is push, pull, delete or gc.
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

// maxEvents bounds the history kept in memory; the file keeps everything.
const maxEvents = 100_000

// EventLog is the append-only history in <data>/events.jsonl, one JSON
// event per line; it survives restarts.
type EventLog struct {
	mu     sync.Mutex
	path   string
	events []Event // oldest first
	log    *slog.Logger
}

func openEventLog(dataDir string, log *slog.Logger) *EventLog {
	l := &EventLog{path: filepath.Join(dataDir, "events.jsonl"), log: log}
	f, err := os.Open(l.path)
	if err != nil {
		return l
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Event
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			l.events = append(l.events, e)
		}
		if len(l.events) > 2*maxEvents {
			l.events = append(l.events[:0], l.events[len(l.events)-maxEvents:]...)
		}
	}
	if len(l.events) > maxEvents {
		l.events = l.events[len(l.events)-maxEvents:]
	}
	return l
}

// Add records e (Time defaults to now) and appends it to the file.
func (l *EventLog) Add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, _ := json.Marshal(e)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	if len(l.events) > 2*maxEvents {
		l.events = append(l.events[:0], l.events[len(l.events)-maxEvents:]...)
	}
	if err := appendLine(l.path, append(b, '\n')); err != nil {
		l.log.Warn("recording event", "path", l.path, "err", err)
	}
}

// Page returns up to limit events, newest first, skipping offset, keeping
// those for which keep (nil: all) is true; and how many matched in all.
func (l *EventLog) Page(offset, limit int, keep func(Event) bool) ([]Event, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	n := 0
	for i := len(l.events) - 1; i >= 0; i-- {
		e := l.events[i]
		if keep != nil && !keep(e) {
			continue
		}
		if n >= offset && len(out) < limit {
			out = append(out, e)
		}
		n++
	}
	return out, n
}

// hooks sits in front of the registry: the runtime read-only gate refuses
// writes while it is closed, writes carry their actor for the history
// (pushes and deletes are recorded where the manifest changes:
// changes.go), and successful manifest pulls are recorded here.
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
		// Only manifest pulls make events here; a blob request (the hot
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
		repo, ref := p.repo, p.ref
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status >= 300 {
			return
		}
		ev := Event{Repo: repo, Addr: r.RemoteAddr, Via: "registry"}
		if s.opts.Htpasswd != "" { // else the name is unverified
			ev.User, _, _ = r.BasicAuth()
		}
		if d, err := digest.Parse(ref); err == nil {
			ev.Digest = d
		} else {
			ev.Tag = ref
			ev.Digest = digest.Digest(sw.Header().Get("Docker-Content-Digest"))
		}
		ev.Action = "pull"
		ev.Time = time.Now().UTC()
		e.events.Add(ev)
		if e.journal != nil {
			e.journal.queue(ev) // the other replicas' histories
		}
	})
}
