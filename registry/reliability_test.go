package registry_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// relStream is size bytes of deterministic pseudo-random data; seed picks
// which.
func relStream(seed byte, size int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), size)
}

func relDigest(r io.Reader) string {
	h := sha256.New()
	io.Copy(h, r)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// relUpload starts a blob upload on repo and returns the URL to PATCH.
func relUpload(t *testing.T, addr, repo string) string {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	return relResolve(t, addr, resp.Header.Get("Location"), nil)
}

func relResolve(t *testing.T, addr, loc string, q url.Values) string {
	t.Helper()
	u, err := url.Parse("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	l, err := url.Parse(loc)
	if err != nil {
		t.Fatalf("Location %q: %v", loc, err)
	}
	u = u.ResolveReference(l)
	v := u.Query()
	for k, vs := range q {
		v[k] = vs
	}
	u.RawQuery = v.Encode()
	return u.String()
}

// relPushBlob pushes body as docker does: POST, one chunked PATCH, PUT.
func relPushBlob(t *testing.T, addr, repo string, body io.Reader, dgst string) {
	t.Helper()
	u := relUpload(t, addr, repo)
	req, _ := http.NewRequest(http.MethodPatch, u, body)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH: %s", resp.Status)
	}
	req, _ = http.NewRequest(http.MethodPut, relResolve(t, addr, resp.Header.Get("Location"), url.Values{"digest": {dgst}}), nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s: %s %s", dgst, resp.Status, b)
	}
}

// relBlobDigest downloads a blob and returns the sha256 of what came.
func relBlobDigest(t *testing.T, addr, repo, dgst string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v2/" + repo + "/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s in %s: %s", dgst, repo, resp.Status)
	}
	return relDigest(resp.Body)
}

// relCheckImage fetches ref's manifest, config and every layer and checks
// each against its digest (remote.Image checks the manifest's).
func relCheckImage(t *testing.T, ref name.Reference, want v1.Hash) {
	t.Helper()
	img, err := remote.Image(ref)
	if err != nil {
		t.Errorf("%s: %v", ref, err)
		return
	}
	if d, err := img.Digest(); err != nil || d != want {
		t.Errorf("%s resolves to %v (%v), want %s", ref, d, err, want)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Errorf("%s: manifest: %v", ref, err)
		return
	}
	// Every blob the manifest names is there and hashes to its digest.
	repo := ref.Context().RepositoryStr()
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if got := relBlobDigest(t, ref.Context().RegistryStr(), repo, d.Digest.String()); got != d.Digest.String() {
			t.Errorf("%s: blob %s reads back as %s", ref, d.Digest, got)
		}
	}
}

// TestKillDuringUpload kills `labreg serve` with SIGKILL in the middle of a
// 256 MiB blob upload, restarts it on the same data dir and checks that
// everything committed before is served intact and the upload can be redone.
func TestKillDuringUpload(t *testing.T) {
	data := t.TempDir()
	srv := testenv.Serve(t, data)

	// Committed before the crash: two images in two repositories.
	committed := map[name.Reference]v1.Hash{}
	for i, repo := range []string{"crash/one", "crash/two"} {
		img, err := random.Image(512<<10, 3)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.NewTag(fmt.Sprintf("%s/%s:v%d", srv.Addr, repo, i), name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatalf("pushing %s: %v", ref, err)
		}
		d, _ := img.Digest()
		committed[ref] = d
	}

	const size = 256 << 20
	dgst := relDigest(relStream(7, size))
	u := relUpload(t, srv.Addr, "crash/big")
	pr, pw := io.Pipe()
	patched := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, u, pr)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("PATCH finished with %s", resp.Status)
		}
		patched <- err
	}()
	// Send half of the blob, wait until the server has written some of it
	// to its upload file, then kill it.
	go func() {
		io.Copy(pw, relStream(7, size/2))
	}()
	uploads := filepath.Join(data, "storage/docker/registry/v2/repositories/crash/big/_uploads")
	deadline := time.Now().Add(30 * time.Second)
	for relUploadedBytes(uploads) < 32<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("the server wrote %d bytes of the upload in 30s", relUploadedBytes(uploads))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := srv.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.Wait(t, 10*time.Second)
	pw.CloseWithError(io.ErrClosedPipe)
	t.Logf("the client saw: %v", <-patched)

	srv = testenv.Serve(t, data)
	for ref, want := range committed {
		ref, _ := name.NewTag(srv.Addr+"/"+ref.Context().RepositoryStr()+":"+ref.Identifier(), name.Insecure)
		relCheckImage(t, ref, want)
	}
	relPushBlob(t, srv.Addr, "crash/big", relStream(7, size), dgst)
	if got := relBlobDigest(t, srv.Addr, "crash/big", dgst); got != dgst {
		t.Errorf("re-uploaded blob reads back as %s, want %s", got, dgst)
	}
}

// relUploadedBytes sums the sizes of the upload data files under dir.
func relUploadedBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Name() == "data" {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// relCounter counts responses with a 5xx status.
type relCounter struct {
	next      http.RoundTripper
	requests  atomic.Int64
	serverErr atomic.Int64
}

func (c *relCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	c.requests.Add(1)
	if err == nil && resp.StatusCode >= 500 {
		c.serverErr.Add(1)
	}
	return resp, err
}

// TestConcurrentPushers has 16 clients push at once into 4 repositories,
// images sharing base layers: no request gets a 5xx and every tag resolves
// to a complete image.
func TestConcurrentPushers(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	var base []v1.Layer
	for range 3 {
		l, err := random.Layer(2<<20, "application/vnd.oci.image.layer.v1.tar+gzip")
		if err != nil {
			t.Fatal(err)
		}
		base = append(base, l)
	}
	const pushers = 16
	counter := &relCounter{next: http.DefaultTransport}
	refs := make([]name.Reference, pushers)
	want := make([]v1.Hash, pushers)
	var wg sync.WaitGroup
	errs := make(chan error, pushers)
	for i := range pushers {
		own, err := random.Layer(1<<20, "application/vnd.oci.image.layer.v1.tar+gzip")
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(mustRandomImage(t), append(base[:i%len(base)+1:i%len(base)+1], own)...)
		if err != nil {
			t.Fatal(err)
		}
		refs[i], _ = name.NewTag(fmt.Sprintf("%s/conc/repo%d:t%d", addr, i%4, i), name.Insecure)
		want[i], _ = img.Digest()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := remote.Write(refs[i], img, remote.WithTransport(counter)); err != nil {
				errs <- fmt.Errorf("pusher %d (%s): %w", i, refs[i], err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := counter.serverErr.Load(); n > 0 {
		t.Errorf("%d of %d requests got a 5xx", n, counter.requests.Load())
	}
	t.Logf("%d requests, none 5xx", counter.requests.Load())
	for i := range pushers {
		relCheckImage(t, refs[i], want[i])
	}
}

func mustRandomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestGracefulShutdown sends SIGTERM while a blob upload is in flight: the
// request completes, then the server exits 0.
func TestGracefulShutdown(t *testing.T) {
	data := t.TempDir()
	srv := testenv.Serve(t, data, "--drain-timeout", "20s")
	const size = 8 << 20
	dgst := relDigest(relStream(3, size))
	u := relUpload(t, srv.Addr, "drain/blob")

	pr, pw := io.Pipe()
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, u, pr)
		resp, err := http.DefaultClient.Do(req)
		done <- result{resp, err}
	}()
	src := relStream(3, size)
	if _, err := io.CopyN(pw, src, size/2); err != nil {
		t.Fatal(err)
	}
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Draining: the listener is closed, so new connections fail, while
	// the PATCH above is still in flight.
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("labreg serve still accepts connections 10s after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := io.Copy(pw, src); err != nil {
		t.Fatalf("sending the rest after SIGTERM: %v", err)
	}
	pw.Close()
	r := <-done
	if r.err != nil {
		t.Fatalf("in-flight PATCH after SIGTERM: %v", r.err)
	}
	r.resp.Body.Close()
	if r.resp.StatusCode != http.StatusAccepted || r.resp.Header.Get("Range") != fmt.Sprintf("0-%d", size-1) {
		t.Errorf("in-flight PATCH after SIGTERM: %s, Range %q; want 202, 0-%d", r.resp.Status, r.resp.Header.Get("Range"), size-1)
	}
	if code := srv.Wait(t, 20*time.Second); code != 0 {
		t.Errorf("labreg serve exited %d after SIGTERM, want 0", code)
	}
	// The data made it to disk: a restarted server completes the upload.
	srv = testenv.Serve(t, data)
	loc := relResolve(t, srv.Addr, r.resp.Header.Get("Location"), url.Values{"digest": {dgst}})
	req, _ := http.NewRequest(http.MethodPut, loc, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("completing the drained upload after restart: %s", resp.Status)
	}
	if got := relBlobDigest(t, srv.Addr, "drain/blob", dgst); got != dgst {
		t.Errorf("blob reads back as %s, want %s", got, dgst)
	}
}

// TestServeStartupErrors: a port in use or an unusable data dir gives one
// clear line on stderr and a non-zero exit.
func TestServeStartupErrors(t *testing.T) {
	bin := testenv.BuildLabreg(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, []byte("x"), 0o644)

	tests := []struct {
		name string
		args []string
		want []string // substrings of the one line
	}{
		{"port in use", []string{"--listen", ln.Addr().String(), "--data", t.TempDir()},
			[]string{ln.Addr().String(), "address already in use"}},
		{"data dir is a file", []string{"--listen", "127.0.0.1:0", "--data", notDir},
			[]string{notDir, "not a directory"}},
	}
	if os.Geteuid() != 0 { // root reads and writes anything
		locked := filepath.Join(t.TempDir(), "locked")
		os.Mkdir(locked, 0o000)
		tests = append(tests, struct {
			name string
			args []string
			want []string
		}{"unreadable data dir", []string{"--listen", "127.0.0.1:0", "--data", locked}, []string{locked, "permission denied"}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"serve", "--ui-listen", ""}, tt.args...)...)
			cmd.Env = testenv.EnvWithout("LABREG_")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("labreg serve %v still running after 20s", tt.args)
			}
			if cmd.ProcessState.ExitCode() == 0 {
				t.Errorf("exit code 0, want non-zero")
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want one:\n%s", len(lines), stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(lines[0], w) {
					t.Errorf("stderr %q does not mention %q", lines[0], w)
				}
			}
		})
	}
}
