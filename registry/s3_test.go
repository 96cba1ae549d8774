package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// s3Replica is what one replica on the shared bucket needs.
func s3Replica(t *testing.T, store *testenv.S3Store, bucket, secretFile string) registry.Options {
	t.Helper()
	access, secret := store.KeyFiles(t)
	return registry.Options{
		Storage:         store.URL(bucket),
		S3AccessKeyFile: access,
		S3SecretKeyFile: secret,
		HTTPSecretFile:  secretFile,
	}
}

// writeSecret writes an HTTP secret file (as a swarm secret would be).
func writeSecret(t testing.TB, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "http-secret")
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestS3PushThroughAPullThroughB runs two replicas on one bucket with one
// HTTP secret: an image pushed through A pulls byte-identical through A
// and through B, and its bytes are in the bucket, not in A's data dir.
func TestS3PushThroughAPullThroughB(t *testing.T) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("s3cr3t", 8))
	dataA := t.TempDir()
	optsA := s3Replica(t, store, bucket, secret)
	optsA.DataDir = dataA
	addrA, _ := testenv.Registry(t, optsA)
	addrB, _ := testenv.Registry(t, s3Replica(t, store, bucket, secret))

	img, err := random.Image(3<<20, 3) // three 3 MiB layers
	if err != nil {
		t.Fatal(err)
	}
	want := testenv.Push(t, addrA+"/lab/app:v1", img)

	for _, addr := range []string{addrA, addrB} {
		ref, err := name.ParseReference(addr+"/lab/app:v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		got, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("pulling through %s: %v", addr, err)
		}
		if d, _ := got.Digest(); d != want {
			t.Fatalf("through %s: manifest %s, pushed %s", addr, d, want)
		}
		wantRaw, _ := img.RawManifest()
		if raw, _ := got.RawManifest(); !bytes.Equal(raw, wantRaw) {
			t.Errorf("through %s: manifest bytes differ from the pushed ones", addr)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			ld, _ := l.Digest()
			wantBytes := s3ReadLayer(t, l)
			gotBytes := s3GetBlob(t, addr, "lab/app", ld.String())
			if !bytes.Equal(gotBytes, wantBytes) {
				t.Errorf("through %s: blob %s: %d bytes differ from the %d pushed", addr, ld, len(gotBytes), len(wantBytes))
			}
		}
	}

	// The filesystem fast paths switch themselves off on S3: they never
	// served a request here (they would have answered 404 from A's disk).
	if m := s3Do(t, "GET", "http://"+addrA+"/metrics", nil, nil); strings.Contains(string(m.body), "labreg_fastpath_requests_total{") {
		t.Errorf("the fast paths are on with S3 storage:\n%s", m.body)
	}

	var blobs int
	for _, k := range store.Objects(t, bucket) {
		if strings.HasPrefix(k, "docker/registry/v2/blobs/sha256/") && strings.HasSuffix(k, "/data") {
			blobs++
		}
	}
	if blobs != 5 { // 3 layers, the config, the manifest
		t.Errorf("bucket holds %d blobs, want 5", blobs)
	}
	if ents, _ := os.ReadDir(filepath.Join(dataA, "storage")); len(ents) != 0 {
		t.Errorf("A's data dir has a local storage tree (%d entries): the push did not go to the bucket alone", len(ents))
	}
}

// TestS3UploadAlternatesReplicas sends one chunked upload whose requests
// alternate between two replicas; it completes and the blob reads back.
func TestS3UploadAlternatesReplicas(t *testing.T) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("0123456789abcdef", 4))
	addrA, _ := testenv.Registry(t, s3Replica(t, store, bucket, secret))
	addrB, _ := testenv.Registry(t, s3Replica(t, store, bucket, secret))

	// Chunks of 6 MiB, 1 MiB and 6 MiB+123: S3 parts above and below the
	// store's 5 MiB minimum part size.
	var chunks [][]byte
	for _, n := range []int{6 << 20, 1 << 20, 6<<20 + 123} {
		b := make([]byte, n)
		rand.Read(b)
		chunks = append(chunks, b)
	}
	all := bytes.Join(chunks, nil)
	dgst := digest.FromBytes(all)

	replicas := []string{addrA, addrB}
	resp := s3Do(t, "POST", "http://"+addrA+"/v2/lab/chunked/blobs/uploads/", nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST through A: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	off := 0
	for i, c := range chunks {
		addr := replicas[(i+1)%2] // B, A, B
		h := http.Header{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("%d-%d", off, off+len(c)-1)},
		}
		resp := s3Do(t, "PATCH", s3Absolute(addr, loc), c, h)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH %d through %s: %s", i, addr, resp.Status)
		}
		loc = resp.Header.Get("Location")
		off += len(c)
	}
	put := s3Absolute(addrA, loc)
	sep := "?"
	if strings.Contains(put, "?") {
		sep = "&"
	}
	resp = s3Do(t, "PUT", put+sep+"digest="+dgst.String(), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT through A: %s", resp.Status)
	}
	for _, addr := range replicas {
		if got := s3GetBlob(t, addr, "lab/chunked", dgst.String()); !bytes.Equal(got, all) {
			t.Errorf("blob through %s: %d bytes, not the %d uploaded", addr, len(got), len(all))
		}
	}
}

// TestS3RefusesAReplicaWithoutTheSecret: shared storage without an HTTP
// secret, or with another one than the replicas already on the bucket, is
// refused at start with one line that names the setting.
func TestS3RefusesAReplicaWithoutTheSecret(t *testing.T) {
	store, bucket := testenv.S3(t)
	testenv.Registry(t, s3Replica(t, store, bucket, writeSecret(t, strings.Repeat("a", 64))))

	for _, tt := range []struct {
		name, secret string
		want         []string
	}{
		{"no secret", "", []string{"registry.http_secret_file", "required with shared storage"}},
		{"another secret", writeSecret(t, strings.Repeat("b", 64)), []string{"another HTTP secret", "registry.http_secret_file"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := s3Replica(t, store, bucket, tt.secret)
			opts.DataDir = t.TempDir()
			_, err := registry.New(context.Background(), opts)
			if err == nil {
				t.Fatal("New accepted the replica")
			}
			s3OneLine(t, err.Error(), tt.want...)
		})
	}
}

// TestS3BadStore: a missing bucket, wrong keys or an unreachable store stop
// `labreg serve` at start: exit 1 and one line on stderr that says which.
func TestS3BadStore(t *testing.T) {
	store, bucket := testenv.S3(t)
	bin := testenv.BuildLabreg(t)
	access, secret := store.KeyFiles(t)
	wrong := filepath.Join(t.TempDir(), "wrong-secret")
	os.WriteFile(wrong, []byte("not-the-secret\n"), 0o600)
	httpSecret := writeSecret(t, strings.Repeat("c", 64))
	closed := "http://127.0.0.1:1" // nothing listens on port 1

	for _, tt := range []struct {
		name, storage, secretKey string
		want                     []string
	}{
		{"missing bucket", store.URL("no-such-bucket"), secret, []string{`bucket "no-such-bucket" does not exist`}},
		{"wrong secret key", store.URL(bucket), wrong, []string{"refused the S3 credentials"}},
		{"store unreachable", "s3://" + bucket + "?endpoint=" + closed, secret, []string{"127.0.0.1:1", "connection refused"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--ui-listen", "", "--data", t.TempDir(),
				"--storage", tt.storage, "--s3-access-key-file", access, "--s3-secret-key-file", tt.secretKey,
				"--http-secret-file", httpSecret)
			cmd.Env = testenv.EnvWithout("LABREG_")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatal("labreg serve still running after 60s")
			}
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			s3OneLine(t, stderr.String(), tt.want...)
			if strings.Contains(stderr.String(), store.SecretKey) {
				t.Errorf("stderr shows the secret key")
			}
		})
	}
}

// s3OneLine checks that msg is one line mentioning every want.
func s3OneLine(t *testing.T, msg string, want ...string) {
	t.Helper()
	msg = strings.TrimSpace(msg)
	if strings.Contains(msg, "\n") {
		t.Errorf("message has more than one line:\n%s", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not mention %q", msg, w)
		}
	}
}

func s3ReadLayer(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func s3GetBlob(t *testing.T, addr, repo, dgst string) []byte {
	t.Helper()
	resp := s3Do(t, "GET", "http://"+addr+"/v2/"+repo+"/blobs/"+dgst, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s through %s: %s", dgst, addr, resp.Status)
	}
	return resp.body
}

type s3Response struct {
	*http.Response
	body []byte
}

func s3Do(t *testing.T, method, url string, body []byte, h http.Header) s3Response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return s3Response{resp, b}
}

// s3Absolute resolves a Location header against a replica's address.
func s3Absolute(addr, loc string) string {
	if u, err := url.Parse(loc); err == nil && u.Host != "" {
		loc = u.RequestURI()
	}
	return "http://" + addr + loc
}

// TestS3Redirect: with redirect=true a blob GET answers 307 to a presigned
// URL of the store, and that URL serves the blob's bytes; without it, 200.
func TestS3Redirect(t *testing.T) {
	store, bucket := testenv.S3(t)
	opts := s3Replica(t, store, bucket, writeSecret(t, strings.Repeat("r", 64)))
	opts.Storage += "&redirect=true"
	addr, _ := testenv.Registry(t, opts)
	img, err := random.Image(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Push(t, addr+"/lab/redirected:v1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get("http://" + addr + "/v2/lab/redirected/blobs/" + ld.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, store.Endpoint+"/"+bucket+"/") {
		t.Fatalf("blob GET: %s, Location %q; want 307 to %s/%s/…", resp.Status, loc, store.Endpoint, bucket)
	}
	got, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()

	// Without redirect=true (the default) a replica on the same bucket
	// serves the bytes itself.
	plain, _ := testenv.Registry(t, s3Replica(t, store, bucket, opts.HTTPSecretFile))
	direct, err := noFollow.Get("http://" + plain + "/v2/lab/redirected/blobs/" + ld.String())
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	if direct.StatusCode != http.StatusOK {
		t.Errorf("blob GET without redirect=true: %s, want 200", direct.Status)
	}
	b, _ := io.ReadAll(got.Body)
	if want := s3ReadLayer(t, layers[0]); got.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
		t.Errorf("presigned URL: %s, %d bytes; want 200 and the %d bytes pushed", got.Status, len(b), len(want))
	}
}

// TestS3FirstReplicasRaceForTheSecret: two first replicas with different
// HTTP secrets start at once on a fresh bucket, each store request taking
// 300–1000 ms: the store's conditional create lets one record its secret,
// and the other is refused (before, both read "none", both wrote, and one
// ran with a secret no other replica shared).
func TestS3FirstReplicasRaceForTheSecret(t *testing.T) {
	store, bucket := testenv.S3(t)
	errs := make(chan error, 2)
	for _, c := range []string{"a", "b"} {
		p := testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{Delay: slowStore})
		opts := s3Replica(t, store, bucket, writeSecret(t, strings.Repeat(c, 64)))
		opts.Storage = p.URL(bucket)
		opts.DataDir = t.TempDir()
		go func() {
			_, err := registry.New(context.Background(), opts)
			errs <- err
		}()
	}
	var refused int
	for range 2 {
		if err := <-errs; err != nil {
			s3OneLine(t, err.Error(), "another HTTP secret")
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d of two first replicas with different secrets were refused, want 1", refused)
	}
}
