package registry

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Fuzz targets for request routing and parsing. `make test` runs each for
// FUZZTIME inputs after the tests; the seed corpus is below and
// in testdata/fuzz/<target>, where `go test -fuzz` also writes any input
// that fails.

// FuzzAPIPath: splitting a /v2/ path and checking its reference never
// panics, and a split path names a repository.
func FuzzAPIPath(f *testing.F) {
	for _, s := range []string{
		"/v2/a/b/manifests/latest", "/v2/a/blobs/uploads/", "/v2/a/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/a/tags/list", "/v2/a/referrers/sha512:zz", "/v2/a/manifests/" + strings.Repeat("t", 129),
		"/v2//manifests/x", "/v2/a/manifests/sha256:", "/v2/a/manifests/:", "/v2/a/manifests/bad!tag",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		ap, ok := parseAPIPath(p)
		if !ok {
			return
		}
		if ap.repo == "" {
			t.Errorf("%q: split with an empty repository", p)
		}
		if e := checkReference(ap.ref); e == nil && ap.ref == "" {
			t.Errorf("%q: an empty reference passed", p)
		}
	})
}

// FuzzContentRange: an accepted Content-Range is two non-negative offsets
// written as digits only.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"0-9", "bytes 10-19/*", "10-", "-1", "9223372036854775807-9223372036854775808", "1-2-3", " 1-2", "+1-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, ok := parseContentRange(s)
		if !ok {
			return
		}
		a, b, _ := strings.Cut(s, "-")
		if start < 0 || end < 0 || !digitsOnly(a) || !digitsOnly(b) {
			t.Errorf("%q accepted as %d-%d", s, start, end)
		}
	})
}

// FuzzRange: whatever Range a client sends, the reply for a 1,000-byte
// blob is at most a few times its size, and a single range served is a
// real one (start <= end < size).
func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=-0", "bytes=0-", "bytes=-0, 0-9", "bytes=0-0,1-1,2-2", "bytes=1000-", "bytes=-00",
		"bytes=0-1," + strings.Repeat("2-2,", 20) + "3-3", "items=0-1", "bytes=5-1", "bytes=,,,"} {
		f.Add(s)
	}
	blob := bytes.Repeat([]byte("x"), 1000)
	f.Fuzz(func(t *testing.T, rng string) {
		r := httptest.NewRequest(http.MethodGet, "/blob", nil)
		r.Header.Set("Range", rng)
		w := httptest.NewRecorder()
		if !limitRanges(r.Header) {
			return // answered 416 by checkRequest
		}
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
		if n := w.Body.Len(); n > 4*len(blob) {
			t.Errorf("Range %q: a %d-byte reply for a %d-byte blob", rng, n, len(blob))
		}
		if w.Code == http.StatusPartialContent && !strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/") {
			var start, end, size int64
			cr := w.Header().Get("Content-Range")
			if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &size); err != nil || start > end || end >= size {
				t.Errorf("Range %q: 206 with Content-Range %q", rng, cr)
			}
		}
	})
}

// FuzzHandler sends arbitrary requests through the whole registry: no
// handler may panic (the recoverer would log "handler panic"), and every
// reply is a valid HTTP status.
func FuzzHandler(f *testing.F) {
	for _, c := range []struct{ method, target, contentRange, rng, body string }{
		{"PUT", "/v2/a/b/blobs/uploads/anything", "", "", "x"},
		{"PUT", "/v2/a/b/blobs/uploads/anything?digest=../../x", "", "", "x"},
		{"PUT", "/v2/a/b/blobs/uploads/anything?digest=sha512:zz", "", "", ""},
		{"POST", "/v2/a/b/blobs/uploads/?mount=sha512:" + strings.Repeat("a", 128) + "&from=c", "", "", ""},
		{"PATCH", "/v2/a/b/blobs/uploads/x", "bytes 10-19/*", "", "0123456789"},
		{"GET", "/v2/a/b/blobs/sha256:" + strings.Repeat("a", 64), "", "bytes=-0", ""},
		{"GET", "/v2/a/b/manifests/" + strings.Repeat("t", 200), "", "", ""},
		{"DELETE", "/v2/a/b/manifests/sha512:zz", "", "", ""},
		{"GET", "/v2/a/b/referrers/sha256:zz?artifactType=x", "", "", ""},
		{"GET", "/v2/_catalog?n=-1", "", "", ""},
		{"GET", "/v2/a/tags/list?n=abc&last=%ff", "", "", ""},
		{"PUT", "/v2/a/manifests/sha512:" + strings.Repeat("0", 128), "", "", "{}"},
	} {
		f.Add(c.method, c.target, c.contentRange, c.rng, []byte(c.body))
	}
	var panics atomic.Int64
	s, err := New(context.Background(), Options{DataDir: f.TempDir(), Logger: slog.New(panicCounter{&panics})})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, method, target, contentRange, rng string, body []byte) {
		if !strings.HasPrefix(target, "/") {
			return
		}
		r, err := http.NewRequest(method, "http://registry"+target, bytes.NewReader(body))
		if err != nil {
			return // not a request net/http would parse
		}
		r.RemoteAddr = "192.0.2.1:1234"
		r.Header.Set("Content-Type", "application/octet-stream")
		if contentRange != "" {
			r.Header.Set("Content-Range", contentRange)
		}
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		before := panics.Load()
		h.ServeHTTP(w, r)
		if panics.Load() != before {
			t.Fatalf("%s %q (Content-Range %q, Range %q): a handler panicked", method, target, contentRange, rng)
		}
		if w.Code < 100 || w.Code > 599 {
			t.Errorf("%s %q: status %d", method, target, w.Code)
		}
		// Every error under /v2/ has an OCI error body.
		if strings.HasPrefix(r.URL.Path, "/v2/") && w.Code >= 400 && method != http.MethodHead {
			if !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") || !strings.Contains(w.Body.String(), `"errors"`) {
				t.Errorf("%s %q (Content-Range %q, Range %q): %d %s %q, want an OCI error body",
					method, target, contentRange, rng, w.Code, w.Header().Get("Content-Type"), w.Body.String())
			}
		}
	})
}

// panicCounter is a slog handler that counts the recoverer's lines.
type panicCounter struct{ n *atomic.Int64 }

func (panicCounter) Enabled(context.Context, slog.Level) bool { return true }
func (p panicCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "handler panic" {
		p.n.Add(1)
	}
	return nil
}
func (p panicCounter) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p panicCounter) WithGroup(string) slog.Handler      { return p }
