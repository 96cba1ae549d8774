package registry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
)

// TestMain routes distribution's logrus lines away from the test output,
// as cmd/labreg does to its logger, once for the test binary.
func TestMain(m *testing.M) {
	RouteLogrus(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// TestNewLeavesLogrusAlone: New changes no process-wide state: logrus
// keeps its hooks and output however many servers are made (each New
// used to add a hook, so every server's logger got every server's lines).
func TestNewLeavesLogrusAlone(t *testing.T) {
	std := logrus.StandardLogger()
	hooks := func() int {
		n := 0
		for _, hs := range std.Hooks {
			n += len(hs)
		}
		return n
	}
	before, out, lvl := hooks(), std.Out, std.GetLevel()
	for range 3 {
		if _, err := New(t.Context(), Options{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OfflineGC(t.Context(), Options{DataDir: t.TempDir()}, GCOptions{DryRun: true}); err != nil && !strings.Contains(err.Error(), "storage") {
		t.Fatal(err)
	}
	if hooks() != before || std.Out != out || std.GetLevel() != lvl {
		t.Errorf("logrus changed: %d hooks (was %d), level %v (was %v), output changed: %v", hooks(), before, std.GetLevel(), lvl, std.Out != out)
	}
}

// TestMetricsRegistration: servers sharing a Prometheus registry share
// its collectors; a registry holding a different metric under one of
// labreg's names makes New fail with the conflict instead of serving
// metrics that count nothing.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := New(t.Context(), Options{DataDir: t.TempDir(), Metrics: reg}); err != nil {
			t.Fatalf("second server on one metrics registry: %v", err)
		}
	}
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "labreg_http_requests_total", Help: "something else"}))
	_, err := New(context.Background(), Options{DataDir: t.TempDir(), Metrics: bad})
	if err == nil || !strings.Contains(err.Error(), "registering metrics") {
		t.Errorf("New with a conflicting metric: %v, want a registration error", err)
	}
}

// TestNoNilCatalog is #14's bug 7: when the catalog cannot be opened,
// the server does not start with a nil one (the comment promised a
// catalog that reports the error; the UI would have hit a nil pointer).
func TestNoNilCatalog(t *testing.T) {
	s := &Server{opts: Options{DataDir: t.TempDir()}, log: slog.New(slog.DiscardHandler)} // no storage/ in it
	e, err := newExtras(s)
	if err == nil && (e == nil || e.catalog == nil) {
		t.Fatal("newExtras left a nil catalog and no error")
	}
	if err == nil {
		t.Fatal("newExtras on a data dir without storage: no error")
	}
}

// TestDummyHashCost: an unknown user is compared against a hash at the
// highest cost of the file's users, re-made when the file changes, and a
// failed check takes at least the floor.
func TestDummyHashCost(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	write := func(costs ...int) {
		var b strings.Builder
		for i, c := range costs {
			h, err := bcrypt.GenerateFromPassword([]byte("pw"), c)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "user%d:%s\n", i, h)
		}
		if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(4, 6, 5)
	a, err := NewAuthenticator(f, "", AuthLimit{Burst: -1})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := bcrypt.Cost(a.dummy); c != 6 {
		t.Errorf("dummy hash cost %d, want 6 (the users' highest)", c)
	}
	write(7)
	os.Chtimes(f, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	if _, _, err := a.table(); err != nil {
		t.Fatal(err)
	}
	if c, _ := bcrypt.Cost(a.dummy); c != 7 {
		t.Errorf("after the file changed: dummy hash cost %d, want 7", c)
	}
	r := httptest.NewRequest("GET", "/v2/", nil)
	r.SetBasicAuth("nobody", "pw")
	start := time.Now()
	if _, err := a.Check(r); err != ErrBadCredentials {
		t.Fatalf("unknown user: %v", err)
	}
	if d := time.Since(start); d < minFailTime {
		t.Errorf("a failed check took %v, less than the %v floor", d, minFailTime)
	}
}

// TestRecoverer: a handler that panics answers 500 with an OCI error body
// and leaves one ERROR line naming the method and path, not the body; a
// panic after the reply began cuts the connection instead.
func TestRecoverer(t *testing.T) {
	var logs strings.Builder
	s := &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}
	h := s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/late" {
			w.WriteHeader(http.StatusOK)
		}
		var counts []int
		counts[len(r.URL.Path)]++ // a bug: index out of range (a runtime panic)
	}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("PUT", "/v2/a/manifests/x", strings.NewReader("secret-body")))
	if w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), `"code":"UNKNOWN"`) {
		t.Errorf("panicking handler: %d %q, want 500 with an OCI error body", w.Code, w.Body.String())
	}
	l := logs.String()
	if !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "method=PUT") || !strings.Contains(l, "path=/v2/a/manifests/x") ||
		!strings.Contains(l, "index out of range") || strings.Contains(l, "secret-body") {
		t.Errorf("log line: %s", l)
	}
	defer func() {
		if v := recover(); v != http.ErrAbortHandler {
			t.Errorf("panic after the status went out: recovered %v, want http.ErrAbortHandler", v)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/late", nil))
}
