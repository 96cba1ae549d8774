package registry_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/opencontainers/go-digest"
)

// logBuffer is a concurrency-safe log destination.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ociCode returns the first error code of an OCI error body, or "" when
// body is not one.
func ociCode(body []byte) string {
	var eb struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &eb) != nil || len(eb.Errors) == 0 {
		return ""
	}
	return eb.Errors[0].Code
}

// TestPanicRequests is #10's acceptance 1: the requests that crashed a
// handler (an upload completed with no digest or a path for a digest, an
// upload id that was never issued) get a 4xx with an OCI error body, with
// and without htpasswd, and the log holds no panic.
func TestPanicRequests(t *testing.T) {
	for _, auth := range []bool{false, true} {
		t.Run(fmt.Sprintf("htpasswd=%v", auth), func(t *testing.T) {
			logs := &logBuffer{}
			opts := registry.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}
			creds := ""
			if auth {
				opts.Htpasswd = testenv.Htpasswd(t, "alice", "secret")
				creds = "alice:secret@"
			}
			addr, _ := testenv.Registry(t, opts)
			start := func() string {
				status, hdr, body := biDo(t, "POST", "http://"+creds+addr+"/v2/a/b/blobs/uploads/", nil, false)
				if status != http.StatusAccepted {
					t.Fatalf("starting upload: %d %s", status, body)
				}
				return hdr.Get("Location")
			}
			sep := func(loc string) string {
				if strings.Contains(loc, "?") {
					return "&"
				}
				return "?"
			}
			loc1, loc2 := start(), start()
			paths := []string{
				loc1,
				loc2 + sep(loc2) + "digest=../../x",
				"/v2/a/b/blobs/uploads/anything",
				"/v2/a/b/blobs/uploads/anything?digest=sha512:zz",
			}
			for _, c := range []string{"", creds} {
				for _, p := range paths {
					status, _, body := biDo(t, "PUT", "http://"+c+addr+p, []byte("x"), false)
					if status < 400 || status >= 500 || ociCode(body) == "" {
						t.Errorf("PUT %s (credentials %q): %d %q, want a 4xx with an OCI error body", p, c, status, body)
					}
				}
			}
			if l := logs.String(); strings.Contains(l, "panic") || strings.Contains(l, "goroutine ") {
				t.Errorf("the log shows a panic:\n%s", short([]byte(l)))
			}
		})
	}
}

// TestSmallDefects covers #10's Why/5: each malformed request gets a 4xx
// with an OCI error body (or the reply RFC 9110 asks for), not a 500, a
// 404 text/plain or a bogus 206.
func TestSmallDefects(t *testing.T) {
	data := t.TempDir()
	addr, _ := testenv.Registry(t, registry.Options{DataDir: data})
	base := "http://" + addr
	blob := bytes.Repeat([]byte("0123456789"), 100) // 1,000 bytes
	biPushBlob(t, base, "small/defects", blob)
	blobURL := base + "/v2/small/defects/blobs/" + digest.FromBytes(blob).String()

	get := func(t *testing.T, method, url string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp, b.Bytes()
	}

	t.Run("Content-Range with a total", func(t *testing.T) {
		status, hdr, body := biDo(t, "POST", base+"/v2/small/cr/blobs/uploads/", nil, false)
		if status != http.StatusAccepted {
			t.Fatalf("starting upload: %d %s", status, body)
		}
		req, _ := http.NewRequestWithContext(t.Context(), "PATCH", base+hdr.Get("Location"), bytes.NewReader(blob[:10]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", "bytes 10-19/*")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || ociCode(b.Bytes()) != "RANGE_INVALID" {
			t.Errorf("PATCH with Content-Range: bytes 10-19/*: %d %s, want 416 RANGE_INVALID", resp.StatusCode, b.Bytes())
		}
	})

	t.Run("chunk of another Content-Type", func(t *testing.T) {
		status, hdr, body := biDo(t, "POST", base+"/v2/small/ct/blobs/uploads/", nil, false)
		if status != http.StatusAccepted {
			t.Fatalf("starting upload: %d %s", status, body)
		}
		req, _ := http.NewRequestWithContext(t.Context(), "PATCH", base+hdr.Get("Location"), bytes.NewReader(blob[:10]))
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnsupportedMediaType || ociCode(b.Bytes()) != "UNSUPPORTED" {
			t.Errorf("PATCH as text/plain: %d %s, want 415 UNSUPPORTED", resp.StatusCode, b.Bytes())
		}
	})

	for _, tc := range []struct{ name, ref, code string }{
		{"tag over 128 characters", strings.Repeat("t", 129), "TAG_INVALID"},
		{"tag with a bad character", "bad!tag", "TAG_INVALID"},
		{"tag starting with a dot", ".hidden", "TAG_INVALID"},
		{"malformed digest", "sha256:xyz", "DIGEST_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range []string{"GET", "PUT", "DELETE"} {
				status, hdr, body := biDo(t, m, base+"/v2/small/defects/manifests/"+tc.ref, []byte("{}"), false)
				if status != http.StatusBadRequest || ociCode(body) != tc.code || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
					t.Errorf("%s manifest %q: %d %s %q, want 400 %s as JSON", m, biShort(tc.ref), status, hdr.Get("Content-Type"), body, tc.code)
				}
			}
		})
	}
	t.Run("tag of 128 characters", func(t *testing.T) {
		status, _, body := biDo(t, "GET", base+"/v2/small/defects/manifests/"+strings.Repeat("t", 128), nil, false)
		if status != http.StatusNotFound || ociCode(body) != "MANIFEST_UNKNOWN" {
			t.Errorf("GET an absent valid tag: %d %s, want 404 MANIFEST_UNKNOWN", status, body)
		}
	})
	t.Run("blob path that is no digest", func(t *testing.T) {
		status, _, body := biDo(t, "GET", base+"/v2/small/defects/blobs/notadigest", nil, false)
		if status != http.StatusBadRequest || ociCode(body) != "DIGEST_INVALID" {
			t.Errorf("GET blob notadigest: %d %s, want 400 DIGEST_INVALID", status, body)
		}
	})

	t.Run("method a route does not take", func(t *testing.T) {
		for _, rq := range []struct{ method, path string }{
			{"POST", "/v2/small/defects/tags/list"},
			{"PATCH", "/v2/small/defects/manifests/latest"},
			{"PUT", "/v2/small/defects/blobs/" + digest.FromBytes(blob).String()},
			{"DELETE", "/v2/_catalog"}, // found by FuzzHandler: 405 text/plain
		} {
			status, hdr, body := biDo(t, rq.method, base+rq.path, nil, false)
			if status != http.StatusMethodNotAllowed || ociCode(body) != "UNSUPPORTED" || hdr.Get("Allow") == "" {
				t.Errorf("%s %s: %d %q (Allow %q), want 405 UNSUPPORTED with Allow", rq.method, rq.path, status, body, hdr.Get("Allow"))
			}
		}
	})
	t.Run("path that is no API endpoint", func(t *testing.T) {
		// The second: an upload id distribution's router has no route for
		// (found by FuzzHandler; it answered 404 text/plain).
		for _, p := range []string{"/v2/small/defects/nothing", "/v2/small/defects/blobs/uploads/%20"} {
			status, _, body := biDo(t, "GET", base+p, nil, false)
			if status != http.StatusNotFound || ociCode(body) != "NOT_FOUND" {
				t.Errorf("GET %s: %d %q, want 404 NOT_FOUND", p, status, body)
			}
		}
	})

	t.Run("Range bytes=-0", func(t *testing.T) {
		resp, body := get(t, "GET", blobURL, "Range", "bytes=-0")
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || ociCode(body) != "RANGE_INVALID" {
			t.Errorf("GET Range: bytes=-0: %d (Content-Range %q) %q, want 416 RANGE_INVALID",
				resp.StatusCode, resp.Header.Get("Content-Range"), short(body))
		}
		// With another range beside it, that one is served.
		resp, body = get(t, "GET", blobURL, "Range", "bytes=-0, 0-9")
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blob[:10]) ||
			resp.Header.Get("Content-Range") != "bytes 0-9/1000" {
			t.Errorf("GET Range: bytes=-0, 0-9: %d %q %q, want 206 of bytes 0-9", resp.StatusCode, resp.Header.Get("Content-Range"), short(body))
		}
	})
	t.Run("many tiny ranges", func(t *testing.T) {
		var rs []string
		for i := 0; i < 900; i++ {
			rs = append(rs, fmt.Sprintf("%d-%d", i, i))
		}
		resp, body := get(t, "GET", blobURL, "Range", "bytes="+strings.Join(rs, ","))
		if len(body) > 2*len(blob) {
			t.Errorf("900 one-byte ranges of a %d-byte blob: a %d-byte reply (status %d)", len(blob), len(body), resp.StatusCode)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blob) {
			t.Errorf("900 one-byte ranges: %d, want 200 with the whole blob", resp.StatusCode)
		}
		// A few ranges are still served as ranges.
		resp, _ = get(t, "GET", blobURL, "Range", "bytes=0-1,5-6,10-11")
		if resp.StatusCode != http.StatusPartialContent {
			t.Errorf("3 ranges: %d, want 206", resp.StatusCode)
		}
	})
}

func short(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// TestReadOnlyRefusesWrites: a --readonly registry answers writes with 405
// and an OCI error body, and leaves an upload started before it as it was
// (distribution's own 405 resumed the upload and rewrote its hash state).
func TestReadOnlyRefusesWrites(t *testing.T) {
	data := t.TempDir()
	rw, _ := testenv.Registry(t, registry.Options{DataDir: data})
	status, hdr, body := biDo(t, "POST", "http://"+rw+"/v2/ro/repo/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting upload: %d %s", status, body)
	}
	loc := hdr.Get("Location")
	if status, _, body := biDo(t, "PATCH", "http://"+rw+loc, []byte("first chunk"), false); status != http.StatusAccepted {
		t.Fatalf("PATCH: %d %s", status, body)
	}
	uploads := filepath.Join(data, "storage", "docker", "registry", "v2", "repositories", "ro", "repo", "_uploads")
	before := mtimes(t, uploads)
	time.Sleep(20 * time.Millisecond) // a rewrite would show in the modification times

	ro, _ := testenv.Registry(t, registry.Options{DataDir: data, ReadOnly: true})
	for _, rq := range []struct{ method, path string }{
		{"PATCH", loc},
		{"PUT", loc + "&digest=" + digest.FromString("first chunk").String()},
		{"DELETE", loc},
		{"POST", "/v2/ro/repo/blobs/uploads/"},
		{"PUT", "/v2/ro/repo/manifests/latest"},
	} {
		status, hdr, body := biDo(t, rq.method, "http://"+ro+rq.path, []byte("more"), false)
		if status != http.StatusMethodNotAllowed || ociCode(body) != "UNSUPPORTED" || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s on a read-only registry: %d %s %q, want 405 UNSUPPORTED as JSON", rq.method, biShort(rq.path), status, hdr.Get("Content-Type"), body)
		}
	}
	if after := mtimes(t, uploads); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the read-only registry changed the upload:\nbefore %v\nafter  %v", before, after)
	}
}

// mtimes maps every file under dir to its size and modification time.
func mtimes(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			m[p] = fmt.Sprintf("%d@%d", fi.Size(), fi.ModTime().UnixNano())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatalf("no upload files under %s", dir)
	}
	return m
}
