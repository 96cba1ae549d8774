package registry_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/opencontainers/go-digest"
)

// TestSHA512Lifecycle follows content pushed with sha512 digests through
// what the conformance suite does not: a mount, then deletes by the other
// digest of the same content. Whichever digest a client deletes by, the
// content is gone under both, and a mount never leaves a dangling link.
func TestSHA512Lifecycle(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{DataDir: t.TempDir()})
	base := "http://" + addr

	sum512 := func(b []byte) digest.Digest {
		s := sha512.Sum512(b)
		return digest.Digest("sha512:" + hex.EncodeToString(s[:]))
	}
	blob := []byte("layer content pushed with a sha512 digest")
	b512, b256 := sum512(blob), digest.FromBytes(blob)

	type step struct {
		name       string
		method     string
		path       string
		body       []byte
		wantStatus int
		wantDigest digest.Digest // Docker-Content-Digest, when set
		wantBody   []byte
	}
	run := func(t *testing.T, steps []step) {
		t.Helper()
		for _, s := range steps {
			status, hdr, body := biDo(t, s.method, base+s.path, s.body, false)
			if status != s.wantStatus {
				t.Fatalf("%s: %s %s: %d, want %d: %s", s.name, s.method, s.path, status, s.wantStatus, body)
			}
			if s.wantDigest != "" && hdr.Get("Docker-Content-Digest") != s.wantDigest.String() {
				t.Errorf("%s: Docker-Content-Digest %q, want %s", s.name, hdr.Get("Docker-Content-Digest"), s.wantDigest)
			}
			if s.wantBody != nil && !bytes.Equal(body, s.wantBody) {
				t.Errorf("%s: body %q, want %q", s.name, body, s.wantBody)
			}
		}
	}

	// Push to lab/a with the sha512 digest.
	status, hdr, body := biDo(t, "POST", base+"/v2/lab/a/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("POST upload: %d %s", status, body)
	}
	loc := hdr.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = base + loc
	}
	status, hdr, body = biDo(t, "PUT", loc+"&digest="+b512.String(), blob, false)
	if status != http.StatusCreated || hdr.Get("Docker-Content-Digest") != b512.String() ||
		!strings.HasSuffix(hdr.Get("Location"), "/blobs/"+b512.String()) {
		t.Fatalf("PUT upload: %d %v %s", status, hdr, body)
	}

	run(t, []step{
		{"GET by sha512", "GET", "/v2/lab/a/blobs/" + b512.String(), nil, 200, b512, blob},
		{"HEAD by sha512", "HEAD", "/v2/lab/a/blobs/" + b512.String(), nil, 200, b512, nil},
		{"GET by sha256", "GET", "/v2/lab/a/blobs/" + b256.String(), nil, 200, b256, blob},
		{"mount by sha512", "POST", "/v2/lab/b/blobs/uploads/?mount=" + b512.String() + "&from=lab/a", nil, 201, b512, nil},
		{"GET mounted by sha512", "GET", "/v2/lab/b/blobs/" + b512.String(), nil, 200, b512, blob},
		{"mount from a repo without it", "POST", "/v2/lab/c/blobs/uploads/?mount=" + b512.String() + "&from=lab/none", nil, 202, "", nil},
		{"no dangling link", "GET", "/v2/lab/c/blobs/" + b512.String(), nil, 404, "", nil},
		{"delete mounted by sha256", "DELETE", "/v2/lab/b/blobs/" + b256.String(), nil, 202, "", nil},
		{"its sha512 is gone", "GET", "/v2/lab/b/blobs/" + b512.String(), nil, 404, "", nil},
		{"delete by sha512", "DELETE", "/v2/lab/a/blobs/" + b512.String(), nil, 202, "", nil},
		{"its sha256 is gone", "GET", "/v2/lab/a/blobs/" + b256.String(), nil, 404, "", nil},
	})

	// A manifest pushed by its sha512.
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	biPushBlob(t, base, "lab/m", cfg)
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`,
		ociManifest, digest.FromBytes(cfg), len(cfg)))
	m512, m256 := sum512(m), digest.FromBytes(m)
	run(t, []step{
		{"PUT manifest by sha512", "PUT", "/v2/lab/m/manifests/" + m512.String(), m, 201, m512, nil},
		{"GET manifest by sha512", "GET", "/v2/lab/m/manifests/" + m512.String(), nil, 200, m512, m},
		{"GET manifest by sha256", "GET", "/v2/lab/m/manifests/" + m256.String(), nil, 200, m256, m},
		{"delete manifest by sha256", "DELETE", "/v2/lab/m/manifests/" + m256.String(), nil, 202, "", nil},
		{"its sha512 is gone", "GET", "/v2/lab/m/manifests/" + m512.String(), nil, 404, "", nil},
		{"PUT manifest by sha512 again", "PUT", "/v2/lab/m/manifests/" + m512.String(), m, 201, m512, nil},
		{"delete manifest by sha512", "DELETE", "/v2/lab/m/manifests/" + m512.String(), nil, 202, "", nil},
		{"its sha256 is gone", "GET", "/v2/lab/m/manifests/" + m256.String(), nil, 404, "", nil},
		{"unknown sha512 manifest", "GET", "/v2/lab/m/manifests/" + sum512([]byte("x")).String(), nil, 404, "", nil},
	})
}
