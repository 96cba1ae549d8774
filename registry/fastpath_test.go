package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// fastPair is one registry served twice over the same data dir: through
// labreg's handler (fast paths on) and through distribution's bare app.
type fastPair struct {
	labreg, plain string // HOST:PORT
	data          string
	srv           *Server
}

// served returns how many requests of kind the fast paths have served.
func (p fastPair) served(t *testing.T, kind string) int {
	t.Helper()
	mfs, err := p.srv.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "labreg_fastpath_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return 0
}

func newFastPair(t *testing.T, opts Options) fastPair {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	srv, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.app.Shutdown() })
	return fastPair{labreg: serveHandler(t, srv.Handler()), plain: serveHandler(t, srv.app), data: opts.DataDir, srv: srv}
}

type fastResp struct {
	status int
	header http.Header
	body   []byte
}

func fastDo(t *testing.T, method, u string, body []byte, hdr ...string) fastResp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fastResp{resp.StatusCode, resp.Header, b}
}

func sha256Of(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestBlobFastPathMatchesDistribution asks labreg (fast path) and
// distribution's bare app the same blob requests and compares status,
// headers and body.
func TestBlobFastPathMatchesDistribution(t *testing.T) {
	p := newFastPair(t, Options{})
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	dgst := sha256Of(blob)
	if err := pushBlobBytes(p.plain, "fast/a", blob, dgst); err != nil {
		t.Fatal(err)
	}
	other := sha256Of([]byte("not pushed"))
	tests := []struct {
		name, method, path string
		hdr                []string
		wantStatus         int
		fast               bool // served by the fast path, not distribution
	}{
		{"GET", "GET", "/v2/fast/a/blobs/" + dgst, nil, 200, true},
		{"HEAD", "HEAD", "/v2/fast/a/blobs/" + dgst, nil, 200, true},
		{"range", "GET", "/v2/fast/a/blobs/" + dgst, []string{"Range", "bytes=10-4105"}, 206, true},
		{"suffix range", "GET", "/v2/fast/a/blobs/" + dgst, []string{"Range", "bytes=-7"}, 206, true},
		{"unsatisfiable range", "GET", "/v2/fast/a/blobs/" + dgst, []string{"Range", "bytes=99999999-"}, 416, true},
		{"If-None-Match", "GET", "/v2/fast/a/blobs/" + dgst, []string{"If-None-Match", `"` + dgst + `"`}, 304, true},
		{"not linked in this repository", "GET", "/v2/fast/b/blobs/" + dgst, nil, 404, false},
		{"unknown blob", "GET", "/v2/fast/a/blobs/" + other, nil, 404, false},
		{"HEAD unknown blob", "HEAD", "/v2/fast/a/blobs/" + other, nil, 404, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := p.served(t, "blob")
			got := fastDo(t, tt.method, "http://"+p.labreg+tt.path, nil, tt.hdr...)
			if fast := p.served(t, "blob") > before; fast != tt.fast {
				t.Errorf("served by the fast path: %v, want %v", fast, tt.fast)
			}
			want := fastDo(t, tt.method, "http://"+p.plain+tt.path, nil, tt.hdr...)
			if got.status != tt.wantStatus || want.status != tt.wantStatus {
				t.Errorf("status: labreg %d, distribution %d, want %d", got.status, want.status, tt.wantStatus)
			}
			sameBlobReply(t, got, want)
		})
	}
}

// sameBlobReply reports how labreg's reply to a blob request differs from
// distribution's.
func sameBlobReply(t *testing.T, got, want fastResp) {
	t.Helper()
	for _, h := range []string{"Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest", "Etag",
		"Cache-Control", "Accept-Ranges", "Docker-Distribution-Api-Version"} {
		if g, w := got.header.Get(h), want.header.Get(h); g != w {
			t.Errorf("%s: labreg %q, distribution %q", h, g, w)
		}
	}
	if !bytes.Equal(got.body, want.body) {
		t.Errorf("bodies differ: labreg %d bytes %.60q, distribution %d bytes %.60q",
			len(got.body), got.body, len(want.body), want.body)
	}
}

// TestBlobFastPathOnMirror: a mirror serves a blob it has cached from its
// file, as its distribution proxy would serve it from storage; one not
// cached yet, and uploads, go to the mirror and distribution as before.
func TestBlobFastPathOnMirror(t *testing.T) {
	origin := newFastPair(t, Options{})
	blob := bytes.Repeat([]byte("mirrored blob 0123456789"), 3000)
	dgst := sha256Of(blob)
	if err := pushBlobBytes(origin.labreg, "lab/m", blob, dgst); err != nil {
		t.Fatal(err)
	}
	p := newFastPair(t, Options{ProxyRemoteURL: "http://" + origin.labreg})
	path := "/v2/lab/m/blobs/" + dgst
	if got := fastDo(t, "GET", "http://"+p.labreg+path, nil); got.status != 200 || !bytes.Equal(got.body, blob) {
		t.Fatalf("first GET through the mirror: %d, %d bytes", got.status, len(got.body))
	}
	if n := p.served(t, "blob"); n != 0 {
		t.Fatalf("the fast path served %d requests for a blob not cached yet", n)
	}
	for _, tt := range []struct {
		name, method string
		hdr          []string
		status       int
	}{
		{"GET", "GET", nil, 200},
		{"HEAD", "HEAD", nil, 200},
		{"range", "GET", []string{"Range", "bytes=100-70000"}, 206},
		{"If-None-Match", "GET", []string{"If-None-Match", `"` + dgst + `"`}, 304},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := p.served(t, "blob")
			got := fastDo(t, tt.method, "http://"+p.labreg+path, nil, tt.hdr...)
			if p.served(t, "blob") != before+1 {
				t.Error("not served by the fast path")
			}
			want := fastDo(t, tt.method, "http://"+p.plain+path, nil, tt.hdr...)
			if got.status != tt.status || want.status != tt.status {
				t.Errorf("status: labreg %d, distribution %d, want %d", got.status, want.status, tt.status)
			}
			sameBlobReply(t, got, want)
		})
	}
	for _, r := range []struct{ method, path string }{
		{"POST", "/v2/lab/m/blobs/uploads/"},
		{"PATCH", "/v2/lab/m/blobs/uploads/0b4d1cd5-6c66-4e2a-a7b3-1f1c0f5a0c22"},
		{"PUT", "/v2/lab/m/blobs/uploads/0b4d1cd5-6c66-4e2a-a7b3-1f1c0f5a0c22?digest=" + dgst},
	} {
		got := fastDo(t, r.method, "http://"+p.labreg+r.path, []byte("x"))
		want := fastDo(t, r.method, "http://"+p.plain+r.path, []byte("x"))
		if got.status != want.status {
			t.Errorf("%s %s on a mirror: labreg %d, distribution %d", r.method, r.path, got.status, want.status)
		}
	}
	if n := p.served(t, "upload"); n != 0 {
		t.Errorf("the upload fast path served %d requests on a mirror", n)
	}
}

// TestBlobBodyReachesConn: labreg's handler chain hands a blob's file to
// the connection's ReadFrom, whole or one range, so that the connection's
// rule (bufConn.ReadFrom) decides how it is sent: no wrapper on the way
// hides it.
func TestBlobBodyReachesConn(t *testing.T) {
	srv, err := New(t.Context(), Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.app.Shutdown() })
	var files atomic.Int64
	addr := serveWrapped(t, srv.Handler(), func(ln net.Listener) net.Listener {
		return recordListener{readBufferedListener{ln}, &files}
	})
	blob := make([]byte, 3<<20+5)
	rand.NewChaCha8([32]byte{4}).Read(blob)
	dgst := sha256Of(blob)
	if err := pushBlobBytes(addr, "lab/c", blob, dgst); err != nil {
		t.Fatal(err)
	}
	u := "http://" + addr + "/v2/lab/c/blobs/" + dgst
	for _, tt := range []struct {
		name string
		hdr  []string
		want []byte
	}{
		{"whole", nil, blob},
		{"range", []string{"Range", "bytes=1000-2100000"}, blob[1000:2100001]},
		{"suffix range", []string{"Range", "bytes=-70000"}, blob[len(blob)-70000:]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := files.Load()
			got := fastDo(t, "GET", u, nil, tt.hdr...)
			if !bytes.Equal(got.body, tt.want) {
				t.Fatalf("%d: body of %d bytes, want %d", got.status, len(got.body), len(tt.want))
			}
			if files.Load() != before+1 {
				t.Error("the connection's ReadFrom was not given the blob's file")
			}
		})
	}
}

// recordListener counts the file bodies its connections' ReadFrom gets.
type recordListener struct {
	net.Listener
	files *atomic.Int64
}

func (l recordListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordConn{c.(*bufConn), l.files}, nil
}

type recordConn struct {
	*bufConn
	files *atomic.Int64
}

func (c *recordConn) ReadFrom(r io.Reader) (int64, error) {
	if isFileBody(r) {
		c.files.Add(1)
	}
	return c.bufConn.ReadFrom(r)
}

// pushBlobBytes pushes b as one monolithic POST + PUT.
func pushBlobBytes(addr, repo string, b []byte, dgst string) error {
	resp, err := do(http.MethodPost, "http://"+addr+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	u, err := location("http://"+addr, resp, url.Values{"digest": {dgst}})
	if err != nil {
		return err
	}
	_, err = do(http.MethodPut, u, bytes.NewReader(b), int64(len(b)), nil, http.StatusCreated)
	return err
}

// TestUploadHandOver moves one chunked upload back and forth between the
// fast path and distribution: the upload state, file layout and stored
// hash state must mean the same to both.
func TestUploadHandOver(t *testing.T) {
	p := newFastPair(t, Options{})
	chunks := [][]byte{
		bytes.Repeat([]byte("a"), 300<<10),
		bytes.Repeat([]byte("b"), 1<<20+7),
		bytes.Repeat([]byte("c"), 5),
		bytes.Repeat([]byte("d"), 64<<10),
	}
	all := bytes.Join(chunks, nil)
	dgst := sha256Of(all)
	for _, order := range [][]string{
		{p.labreg, p.plain, p.labreg, p.plain, p.labreg},
		{p.plain, p.labreg, p.plain, p.labreg, p.plain},
		{p.labreg, p.labreg, p.labreg, p.labreg, p.labreg},
	} {
		name := "x"
		if order[0] == p.labreg {
			name = "y"
		}
		repo := "handover/" + name + fmt.Sprint(len(order[1]))
		t.Run(strings.Join([]string{who(p, order[0]), who(p, order[1]), who(p, order[4])}, "-"), func(t *testing.T) {
			resp := fastDo(t, "POST", "http://"+order[0]+"/v2/"+repo+"/blobs/uploads/", nil)
			if resp.status != 202 {
				t.Fatalf("POST: %d %s", resp.status, resp.body)
			}
			loc := resp.header.Get("Location")
			before, toLabreg := p.served(t, "upload"), 0
			for _, addr := range order { // PATCH 0-3, PUT 4
				if addr == p.labreg {
					toLabreg++
				}
			}
			var off int
			for i, c := range chunks {
				addr := order[i]
				u := "http://" + addr + loc
				resp = fastDo(t, "PATCH", u, c, "Content-Type", "application/octet-stream",
					"Content-Range", fmt.Sprintf("%d-%d", off, off+len(c)-1))
				off += len(c)
				if resp.status != 202 || resp.header.Get("Range") != fmt.Sprintf("0-%d", off-1) {
					t.Fatalf("PATCH %d to %s: %d Range %q %s", i, who(p, addr), resp.status, resp.header.Get("Range"), resp.body)
				}
				if resp.header.Get("Docker-Upload-UUID") == "" {
					t.Errorf("PATCH %d to %s: no Docker-Upload-UUID", i, who(p, addr))
				}
				loc = resp.header.Get("Location")
				// The other side reports the same progress.
				st := fastDo(t, "GET", "http://"+p.plain+loc, nil)
				if st.status != 204 || st.header.Get("Range") != fmt.Sprintf("0-%d", off-1) {
					t.Fatalf("upload status after PATCH %d: %d Range %q", i, st.status, st.header.Get("Range"))
				}
			}
			resp = fastDo(t, "PUT", "http://"+order[4]+loc+"&digest="+url.QueryEscape(dgst), nil)
			if resp.status != 201 || resp.header.Get("Docker-Content-Digest") != dgst {
				t.Fatalf("PUT to %s: %d %s", who(p, order[4]), resp.status, resp.body)
			}
			if n := p.served(t, "upload") - before; n != toLabreg {
				t.Errorf("fast path served %d of the %d PATCH/PUT sent to labreg", n, toLabreg)
			}
			for _, addr := range []string{p.labreg, p.plain} {
				got := fastDo(t, "GET", "http://"+addr+"/v2/"+repo+"/blobs/"+dgst, nil)
				if got.status != 200 || !bytes.Equal(got.body, all) {
					t.Errorf("GET from %s: %d, %d bytes", who(p, addr), got.status, len(got.body))
				}
			}
			// The upload is gone.
			if st := fastDo(t, "GET", "http://"+p.plain+loc, nil); st.status != 404 {
				t.Errorf("upload status after commit: %d, want 404", st.status)
			}
		})
	}
}

func who(p fastPair, addr string) string {
	if addr == p.labreg {
		return "labreg"
	}
	return "distribution"
}

// TestUploadFastPathErrors: what the fast path refuses or rejects.
func TestUploadFastPathErrors(t *testing.T) {
	p := newFastPair(t, Options{})
	start := func(repo string) string {
		resp := fastDo(t, "POST", "http://"+p.labreg+"/v2/"+repo+"/blobs/uploads/", nil)
		if resp.status != 202 {
			t.Fatalf("POST: %d", resp.status)
		}
		return "http://" + p.labreg + resp.header.Get("Location")
	}
	blob := []byte("some blob content")
	t.Run("digest mismatch", func(t *testing.T) {
		u := start("errs/mismatch")
		wrong := sha256Of([]byte("other"))
		resp := fastDo(t, "PUT", u+"&digest="+wrong, blob)
		if resp.status != 400 || !bytes.Contains(resp.body, []byte("DIGEST_INVALID")) {
			t.Errorf("PUT with wrong digest: %d %s", resp.status, resp.body)
		}
		if st := fastDo(t, "GET", u, nil); st.status != 404 {
			t.Errorf("upload after failed commit: %d, want 404 (cancelled)", st.status)
		}
		for _, d := range []string{wrong, sha256Of(blob)} {
			if _, err := os.Stat(filepath.Join(p.data, "storage/docker/registry/v2/blobs/sha256", d[7:9], d[7:])); err == nil {
				t.Errorf("blob %s stored after a failed commit", d)
			}
		}
	})
	t.Run("tampered upload state", func(t *testing.T) {
		u := start("errs/state")
		resp := fastDo(t, "PATCH", strings.Replace(u, "_state=", "_state=AAAA", 1), blob)
		if resp.status != 404 || !bytes.Contains(resp.body, []byte("BLOB_UPLOAD_INVALID")) { // as distribution answers
			t.Errorf("PATCH with bad state: %d %s", resp.status, resp.body)
		}
	})
	t.Run("range not at the end", func(t *testing.T) {
		u := start("errs/range")
		resp := fastDo(t, "PATCH", u, blob, "Content-Range", fmt.Sprintf("5-%d", 5+len(blob)-1))
		if resp.status != 416 {
			t.Errorf("PATCH with Content-Range past the end: %d %s, want 416", resp.status, resp.body)
		}
	})
	t.Run("read-only registry", func(t *testing.T) {
		ro := newFastPair(t, Options{ReadOnly: true, DataDir: p.data})
		u := strings.Replace(start("errs/ro"), p.labreg, ro.labreg, 1)
		if resp := fastDo(t, "PATCH", u, blob); resp.status < 400 || resp.status >= 500 {
			t.Errorf("PATCH on a read-only registry: %d %s", resp.status, resp.body)
		}
	})
}

// TestFastPathAuth: with htpasswd on, the fast paths let nothing through
// that distribution would refuse.
func TestFastPathAuth(t *testing.T) {
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte("alice:"+string(hash)+"\n"), 0o600)
	p := newFastPair(t, Options{Htpasswd: htpasswd, DataDir: filepath.Join(dir, "data")})

	blob := []byte("guarded blob")
	dgst := sha256Of(blob)
	base := "http://alice:secret@" + p.labreg
	resp := fastDo(t, "POST", base+"/v2/auth/x/blobs/uploads/", nil)
	if resp.status != 202 {
		t.Fatalf("POST with credentials: %d %s", resp.status, resp.body)
	}
	loc := resp.header.Get("Location")
	for _, c := range []struct{ user, want string }{{"", "401"}, {"alice:wrong@", "401"}} {
		r := fastDo(t, "PATCH", "http://"+c.user+p.labreg+loc, blob)
		if fmt.Sprint(r.status) != c.want || r.header.Get("Www-Authenticate") == "" {
			t.Errorf("PATCH as %q: %d (WWW-Authenticate %q), want %s", c.user, r.status, r.header.Get("Www-Authenticate"), c.want)
		}
	}
	if r := fastDo(t, "PUT", base+loc+"&digest="+dgst, blob); r.status != 201 {
		t.Fatalf("PUT with credentials: %d %s", r.status, r.body)
	}
	for _, c := range []struct {
		user string
		want int
	}{{"", 401}, {"alice:wrong@", 401}, {"bob:secret@", 401}, {"alice:secret@", 200}} {
		before := p.served(t, "blob")
		r := fastDo(t, "GET", "http://"+c.user+p.labreg+"/v2/auth/x/blobs/"+dgst, nil)
		if r.status != c.want {
			t.Errorf("GET blob as %q: %d, want %d", c.user, r.status, c.want)
		}
		if fast := p.served(t, "blob") > before; fast != (c.want == 200) {
			t.Errorf("GET blob as %q served by the fast path: %v", c.user, fast)
		}
		if c.want == 200 && !bytes.Equal(r.body, blob) {
			t.Errorf("GET blob as %q: body %q", c.user, r.body)
		}
		if c.want != 200 && bytes.Contains(r.body, blob) {
			t.Errorf("GET blob as %q leaked the blob", c.user)
		}
	}
}
