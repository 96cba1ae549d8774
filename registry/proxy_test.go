package registry_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// origin is a real labreg registry (with basic auth) behind a handler
// that counts the GETs of each /v2 path, can hold every blob GET back
// for a while (so that a storm's requests really overlap), and can cut
// one blob's reply in the middle once.
type origin struct {
	*httptest.Server
	mu      sync.Mutex
	gets    map[string]int
	delay   time.Duration
	cutOnce atomic.Pointer[string] // blob digest whose next reply is cut
}

func newOrigin(t *testing.T, user, pass string) *origin {
	t.Helper()
	srv, err := registry.New(t.Context(), registry.Options{DataDir: t.TempDir(), Htpasswd: testenv.Htpasswd(t, user, pass),
		AuthLimit: registry.AuthLimit{Burst: -1}})
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{gets: map[string]int{}}
	h := srv.Handler()
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blob := strings.Contains(r.URL.Path, "/blobs/sha256:")
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/") && r.URL.Path != "/v2/" {
			o.mu.Lock()
			o.gets[r.URL.Path]++
			o.mu.Unlock()
			if blob && o.delay > 0 {
				time.Sleep(o.delay)
			}
		}
		if c := o.cutOnce.Load(); blob && r.Method == http.MethodGet && c != nil && strings.HasSuffix(r.URL.Path, *c) && o.cutOnce.CompareAndSwap(c, nil) {
			h.ServeHTTP(&cutWriter{ResponseWriter: w, left: 1000}, r)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(o.Close)
	return o
}

func (o *origin) count(suffix string) (n, total int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for p, c := range o.gets {
		if strings.HasSuffix(p, suffix) {
			n += c
		}
		if strings.Contains(p, "/blobs/") {
			total += c
		}
	}
	return n, total
}

// cutWriter sends left bytes of the body, then aborts the connection.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (w *cutWriter) Write(b []byte) (int, error) {
	if len(b) > w.left {
		w.ResponseWriter.Write(b[:w.left])
		rc := http.NewResponseController(w.ResponseWriter)
		rc.Flush()
		if conn, _, err := rc.Hijack(); err == nil {
			conn.Close()
		}
		return 0, io.ErrClosedPipe
	}
	w.left -= len(b)
	return w.ResponseWriter.Write(b)
}

// mirrorOf starts a labreg mirror of o with its credentials in a file.
func mirrorOf(t *testing.T, o *origin, user, pass string) string {
	t.Helper()
	cred := filepath.Join(t.TempDir(), "origin-credentials")
	if err := os.WriteFile(cred, []byte(user+":"+pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := testenv.Registry(t, registry.Options{ProxyRemoteURL: o.URL, ProxyCredentialsFile: cred})
	return addr
}

func pushTo(t *testing.T, o *origin, repo string, img v1.Image, user, pass string) {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(o.URL, "http://")+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: user, Password: pass})); err != nil {
		t.Fatalf("push to the origin: %v", err)
	}
}

const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json"

// get fetches path from addr with c and checks that the body hashes to
// want (when set); it returns the status and body.
func get(c *http.Client, method, addr, path, want string) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: body: %w", method, path, err)
	}
	if want != "" && resp.StatusCode == http.StatusOK && method == http.MethodGet {
		sum := sha256.Sum256(b)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != want {
			return resp.StatusCode, b, fmt.Errorf("%s %s: body is %s", method, path, got)
		}
	}
	return resp.StatusCode, b, nil
}

func blobsOf(t *testing.T, img v1.Image) []string {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{cfg.String()}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.String())
	}
	return out
}

// TestMirrorCoalesces: 300 nodes pulling one image by digest through a
// mirror at the same moment (each with its own connection; the origin
// holds every blob GET back 300ms so that the requests overlap) make the
// origin serve each blob and the manifest once. distribution's proxy
// alone fetched once per concurrent request (664 GETs for 4 blobs).
func TestMirrorCoalesces(t *testing.T) {
	const user, pass = "mirror", "pw-origin-9f2"
	o := newOrigin(t, user, pass)
	o.delay = 300 * time.Millisecond
	img, err := random.Image(256<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	pushTo(t, o, "lab/web:v1", img, user, pass)
	o.mu.Lock()
	o.gets = map[string]int{} // the push's own GETs do not count
	o.mu.Unlock()
	m := mirrorOf(t, o, user, pass)
	dg, _ := img.Digest()
	blobs := blobsOf(t, img)

	const nodes = 300
	start := make(chan struct{})
	errs := make(chan error, nodes)
	var wg sync.WaitGroup
	for range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{}, Timeout: 2 * time.Minute} // its own connection
			defer c.CloseIdleConnections()
			<-start
			if st, _, err := get(c, http.MethodGet, m, "/v2/lab/web/manifests/"+dg.String(), dg.String()); err != nil || st != 200 {
				errs <- fmt.Errorf("manifest: %d %v", st, err)
				return
			}
			for _, b := range blobs {
				if st, _, err := get(c, http.MethodGet, m, "/v2/lab/web/blobs/"+b, b); err != nil || st != 200 {
					errs <- fmt.Errorf("blob %s: %d %v", b, st, err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_, total := o.count("")
	t.Logf("%d nodes, %d blobs: the origin served %d blob GETs", nodes, len(blobs), total)
	for _, b := range append([]string{dg.String()}, blobs...) {
		if n, _ := o.count(b); n != 1 {
			t.Errorf("the origin served %s %d times, want once", b, n)
		}
	}
}

// TestMirrorOriginDown: with its origin down a mirror still serves what
// it cached (manifests by digest, blobs), answers a tag lookup with a 503
// naming the origin (without its credentials), and a blob it never
// fetched with a 5xx.
func TestMirrorOriginDown(t *testing.T) {
	const user, pass = "mirror", "pw-origin-77c"
	o := newOrigin(t, user, pass)
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	other, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	pushTo(t, o, "lab/web:v1", img, user, pass)
	pushTo(t, o, "lab/web:v2", other, user, pass)
	m := mirrorOf(t, o, user, pass)
	dg, _ := img.Digest()
	blobs := blobsOf(t, img)
	c := &http.Client{Timeout: time.Minute}

	// by tag while the origin is up: resolved there, then cached by digest
	if st, _, err := get(c, http.MethodGet, m, "/v2/lab/web/manifests/v1", dg.String()); err != nil || st != 200 {
		t.Fatalf("manifest by tag through the mirror: %d %v", st, err)
	}
	for _, b := range blobs {
		if st, _, err := get(c, http.MethodGet, m, "/v2/lab/web/blobs/"+b, b); err != nil || st != 200 {
			t.Fatalf("blob through the mirror: %d %v", st, err)
		}
	}
	o.Close()

	for _, p := range []string{"/v2/lab/web/manifests/" + dg.String(), "/v2/lab/web/blobs/" + blobs[0], "/v2/lab/web/blobs/" + blobs[2]} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			want := dg.String()
			if strings.Contains(p, "/blobs/") {
				want = p[strings.LastIndexByte(p, '/')+1:]
			}
			if st, _, err := get(c, method, m, p, want); err != nil || st != 200 {
				t.Errorf("%s %s with the origin down: %d %v, want 200 from the cache", method, p, st, err)
			}
		}
	}
	st, body, err := get(c, http.MethodGet, m, "/v2/lab/web/manifests/v1", "")
	t.Logf("tag with the origin down: %d %s", st, body)
	if err != nil || st != http.StatusServiceUnavailable || !strings.Contains(string(body), "UNAVAILABLE") || !strings.Contains(string(body), o.URL) {
		t.Errorf("tag lookup with the origin down: %d %s %v; want 503 UNAVAILABLE naming %s", st, body, err, o.URL)
	}
	if strings.Contains(string(body), pass) {
		t.Error("the reply shows the origin's password")
	}
	ob := blobsOf(t, other)[1]
	st, body, _ = get(c, http.MethodGet, m, "/v2/lab/web/blobs/"+ob, "")
	t.Logf("uncached blob with the origin down: %d %s", st, body)
	if st < 500 {
		t.Errorf("a blob never fetched, origin down: %d, want a 5xx (retryable)", st)
	}
}

// TestMirrorCutFetch: a blob whose fetch from the origin is cut in the
// middle is not cached half: the client sees the failure, and the next
// request fetches it again, whole.
func TestMirrorCutFetch(t *testing.T) {
	const user, pass = "mirror", "pw-origin-c07"
	o := newOrigin(t, user, pass)
	img, err := random.Image(512<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	pushTo(t, o, "lab/cut:v1", img, user, pass)
	m := mirrorOf(t, o, user, pass)
	layer := blobsOf(t, img)[1]
	o.cutOnce.Store(&layer)
	c := &http.Client{Timeout: time.Minute}
	if st, _, err := get(c, http.MethodGet, m, "/v2/lab/cut/blobs/"+layer, layer); err == nil && st == 200 {
		n, _ := o.count(layer)
		t.Fatalf("a blob whose origin reply was cut came through whole (origin GETs %d, cut pending %v): %v", n, o.cutOnce.Load() != nil, o.gets)
	}
	if st, _, err := get(c, http.MethodGet, m, "/v2/lab/cut/blobs/"+layer, layer); err != nil || st != 200 {
		t.Fatalf("after a cut fetch: %d %v, want the whole blob", st, err)
	}
	if n, _ := o.count(layer); n != 2 {
		t.Errorf("the origin served the blob %d times, want 2 (the cut one was not kept)", n)
	}
}

// TestMirrorSameBlobTwoRepos: the same image pulled at once from two
// repositories of a mirror is fetched from the origin once per
// repository (distribution's proxy links blobs per repository), not once
// per request: while one repository's fetch of a digest runs, the
// other's waits for it instead of streaming without storing.
func TestMirrorSameBlobTwoRepos(t *testing.T) {
	const user, pass = "mirror", "pw-origin-2r"
	o := newOrigin(t, user, pass)
	o.delay = 200 * time.Millisecond
	img, err := random.Image(128<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	pushTo(t, o, "lab/a:v1", img, user, pass)
	pushTo(t, o, "lab/b:v1", img, user, pass)
	o.mu.Lock()
	o.gets = map[string]int{}
	o.mu.Unlock()
	m := mirrorOf(t, o, user, pass)
	blobs := blobsOf(t, img)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{}, Timeout: 2 * time.Minute}
			defer c.CloseIdleConnections()
			repo := []string{"a", "b"}[i%2]
			<-start
			for _, b := range blobs {
				if st, _, err := get(c, http.MethodGet, m, "/v2/lab/"+repo+"/blobs/"+b, b); err != nil || st != 200 {
					t.Errorf("blob %s from lab/%s: %d %v", b, repo, st, err)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, b := range blobs {
		if n, _ := o.count(b); n != 2 {
			t.Errorf("the origin served %s %d times, want twice (once per repository)", b, n)
		}
	}
}
