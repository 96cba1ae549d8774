package registry_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// stalledPatch opens a connection to addr and sends a PATCH of upload
// (an absolute URL from relUpload) announcing length body bytes, of which
// it sends only first. The caller reads the answer with readAnswer.
func stalledPatch(t *testing.T, addr, upload string, length int, first string) net.Conn {
	t.Helper()
	u, err := url.Parse(upload)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s",
		u.RequestURI(), addr, length, first)
	return c
}

// readAnswer reads one HTTP response from c, waiting at most d.
func readAnswer(t *testing.T, c net.Conn, d time.Duration) (*http.Response, string, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), nil
}

// waitFor polls cond every 10ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waited %s for %s", d, what)
		}
	}
}

// TestGCDrainBound: an upload that stalls mid-body does not keep the
// registry read-only beyond GC's drain bound. GC aborts it (the client is
// told 503 with Retry-After, so it retries), collects, and pushes work
// right after.
func TestGCDrainBound(t *testing.T) {
	const drain = time.Second
	addr, srv := testenv.Registry(t, registry.Options{GCDrainTimeout: drain})
	testenv.Push(t, addr+"/drain/app:1", catImage(t, 1000))

	c := stalledPatch(t, addr, relUpload(t, addr, "drain/stall"), 1000, "x")
	waitFor(t, 10*time.Second, "the stalled upload to be in flight", func() bool { return srv.WritesInFlight() == 1 })

	start := time.Now()
	res, err := srv.GC(context.Background(), registry.GCOptions{})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("GC with a stalled upload in flight: %v", err)
	}
	// The bound plus the grace aborted writes get to end (5s); the abort
	// itself ends the stalled read at once.
	if took < drain || took > drain+5*time.Second {
		t.Errorf("GC took %s with a stalled upload in flight; want between the drain bound %s and %s", took, drain, drain+5*time.Second)
	}
	t.Logf("GC took %s, kept %d", took, res.Kept)
	resp, body, err := readAnswer(t, c, 5*time.Second)
	if err != nil {
		t.Fatalf("the stalled upload got no answer: %v", err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, `"UNAVAILABLE"`) {
		t.Errorf("stalled upload aborted by GC: %s, Retry-After %q, %s; want 503 UNAVAILABLE with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if ro, why := srv.ReadOnlyState(); ro {
		t.Errorf("still read-only after GC: %s", why)
	}
	testenv.Push(t, addr+"/drain/app:2", catImage(t, 1000))
}

// TestUploadCap: uploads beyond MaxUploads get 429 TOOMANYREQUESTS with
// Retry-After and an OCI error body; reads are not counted, and once the
// upload in flight ends another is served.
func TestUploadCap(t *testing.T) {
	addr, srv := testenv.Registry(t, registry.Options{MaxUploads: 1})
	first := relUpload(t, addr, "cap/a")
	c := stalledPatch(t, addr, first, 1000, "x")
	waitFor(t, 10*time.Second, "the first upload to be in flight", func() bool { return srv.WritesInFlight() == 1 })

	second := relUpload(t, addr, "cap/b") // a POST without a body is not an upload of data
	req, _ := http.NewRequest(http.MethodPatch, second, strings.NewReader("data"))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"TOOMANYREQUESTS"`) {
		t.Errorf("upload beyond the cap: %s, Retry-After %q, %s; want 429 TOOMANYREQUESTS with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if resp, err := http.Get("http://" + addr + "/v2/"); err != nil || resp.StatusCode != 200 {
		t.Errorf("a read while the cap is reached: %v %v", resp, err)
	}
	c.Close()
	waitFor(t, 10*time.Second, "the first upload to end", func() bool { return srv.WritesInFlight() == 0 })
	testenv.Push(t, addr+"/cap/app:1", catImage(t, 1000))
}

// TestStrayTempsRemovedAtStart: temporary files a crash left between
// their write and their rename are removed when a server starts (a few
// seconds after).
func TestStrayTempsRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	stray := filepath.Join(dir, "storage/docker/registry/v2/repositories/x/_manifests/tags/1/current/link.0123456789abcdef.tmp")
	keep := filepath.Join(dir, "storage/docker/registry/v2/repositories/x/notes.tmp") // not one of labreg's
	testenv.WriteFiles(t, dir, map[string]string{
		strings.TrimPrefix(stray, dir+"/"): "sha256:",
		strings.TrimPrefix(keep, dir+"/"):  "x",
	})
	old := time.Now().Add(-time.Hour)
	os.Chtimes(stray, old, old)
	testenv.Registry(t, registry.Options{DataDir: dir})
	waitFor(t, 30*time.Second, "the stray temp file to be removed", func() bool {
		_, err := os.Stat(stray)
		return errors.Is(err, os.ErrNotExist)
	})
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file not of labreg's temp pattern was removed: %v", err)
	}
}
