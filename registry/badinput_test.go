package registry_test

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/opencontainers/go-digest"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// TestBadInput sends what a broken or hostile client sends and checks that
// each gets a 4xx with an OCI error body and that nothing reaches the data
// dir: no blob, no link, no repository, no upload left behind.
func TestBadInput(t *testing.T) {
	data := t.TempDir()
	addr, _ := testenv.Registry(t, registry.Options{DataDir: data})
	base := "http://" + addr

	// A valid manifest whose config is pushed, so that only the property
	// under test is wrong.
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	biPushBlob(t, base, "good/repo", config)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`,
		ociManifest, digest.FromBytes(config), len(config)))
	bigManifest := bytes.Repeat([]byte(" "), 4<<20+1)
	copy(bigManifest, manifest)
	sha512Of := func(b []byte) string { s := sha512.Sum512(b); return "sha512:" + hex.EncodeToString(s[:]) }
	long := strings.Repeat("a", 256)

	type req struct {
		method, path string
		body         []byte
		chunked      bool // send without Content-Length
	}
	tests := []struct {
		name     string
		reqs     []req // all but the last must succeed (setup of the bad step)
		wantCode int
		wantErr  string
	}{
		{name: "malformed manifest JSON", reqs: []req{{method: "PUT", path: "/v2/bad/json/manifests/latest", body: []byte(`{"schemaVersion":2,"config":`)}},
			wantCode: 400, wantErr: "MANIFEST_INVALID"},
		{name: "manifest body not matching its digest", reqs: []req{{method: "PUT", path: "/v2/bad/dgst/manifests/" + digest.FromString("other").String(), body: manifest}},
			wantCode: 400, wantErr: "DIGEST_INVALID"},
		{name: "manifest body not matching its sha512 digest", reqs: []req{{method: "PUT", path: "/v2/bad/dgst512/manifests/" + sha512Of([]byte("other")), body: manifest}},
			wantCode: 400, wantErr: "DIGEST_INVALID"},
		{name: "manifest over 4 MiB", reqs: []req{{method: "PUT", path: "/v2/bad/big/manifests/latest", body: bigManifest}},
			wantCode: 413, wantErr: "MANIFEST_INVALID"},
		{name: "manifest over 4 MiB without Content-Length", reqs: []req{{method: "PUT", path: "/v2/bad/bigchunked/manifests/latest", body: bigManifest, chunked: true}},
			wantCode: 413, wantErr: "MANIFEST_INVALID"},
		{name: "blob digest mismatch", reqs: []req{
			{method: "POST", path: "/v2/bad/blob/blobs/uploads/"},
			{method: "PUT", path: "?digest=" + digest.FromString("something else").String(), body: []byte("blob content")}},
			wantCode: 400, wantErr: "DIGEST_INVALID"},
		{name: "blob sha512 digest mismatch", reqs: []req{
			{method: "POST", path: "/v2/bad/blob512/blobs/uploads/"},
			{method: "PUT", path: "?digest=" + sha512Of([]byte("something else")), body: []byte("blob content")}},
			wantCode: 400, wantErr: "DIGEST_INVALID"},
		{name: "name with ..", reqs: []req{{method: "PUT", path: "/v2/good/../evil/manifests/latest", body: manifest}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name with %2e%2e", reqs: []req{{method: "PUT", path: "/v2/good/%2e%2e/evil/manifests/latest", body: manifest}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name that is %2e%2e", reqs: []req{{method: "PUT", path: "/v2/%2e%2e/manifests/latest", body: manifest}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name with .. on blob upload", reqs: []req{{method: "POST", path: "/v2/good/../../blobs/uploads/"}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name with %2F..%2F", reqs: []req{{method: "GET", path: "/v2/good%2F..%2Frepo/tags/list"}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "upper-case name", reqs: []req{{method: "PUT", path: "/v2/Bad/Upper/manifests/latest", body: manifest}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "upper-case name on blob upload", reqs: []req{{method: "POST", path: "/v2/Upper/blobs/uploads/"}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name over 255 characters", reqs: []req{{method: "PUT", path: "/v2/" + long + "/manifests/latest", body: manifest}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name over 255 characters on blob upload", reqs: []req{{method: "POST", path: "/v2/" + long + "/blobs/uploads/"}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "name over 255 characters in referrers", reqs: []req{{method: "GET", path: "/v2/" + long + "/referrers/" + digest.FromBytes(manifest).String()}},
			wantCode: 400, wantErr: "NAME_INVALID"},
		{name: "bad digest in referrers", reqs: []req{{method: "GET", path: "/v2/good/repo/referrers/sha256:nothex"}},
			wantCode: 400, wantErr: "DIGEST_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := biSnapshot(t, data)
			var loc string
			for i, rq := range tt.reqs {
				u := base + rq.path
				if strings.HasPrefix(rq.path, "?") {
					u = loc + "&" + strings.TrimPrefix(rq.path, "?")
					if !strings.Contains(loc, "?") {
						u = loc + rq.path
					}
				}
				status, hdr, body := biDo(t, rq.method, u, rq.body, rq.chunked)
				if i < len(tt.reqs)-1 {
					if status >= 300 {
						t.Fatalf("setup %s %s: %d %s", rq.method, rq.path, status, body)
					}
					loc = hdr.Get("Location")
					if strings.HasPrefix(loc, "/") {
						loc = base + loc
					}
					continue
				}
				if status != tt.wantCode {
					t.Errorf("%s %s: status %d, want %d; body %s", rq.method, biShort(rq.path), status, tt.wantCode, body)
				}
				var eb struct {
					Errors []struct {
						Code    string `json:"code"`
						Message string `json:"message"`
					} `json:"errors"`
				}
				if err := json.Unmarshal(body, &eb); err != nil || len(eb.Errors) == 0 {
					t.Errorf("%s %s: body is not an OCI error: %q (%v)", rq.method, biShort(rq.path), body, err)
				} else if eb.Errors[0].Code != tt.wantErr {
					t.Errorf("%s %s: error code %s, want %s (%s)", rq.method, biShort(rq.path), eb.Errors[0].Code, tt.wantErr, eb.Errors[0].Message)
				}
			}
			after := biSnapshot(t, data)
			if diff := biDiff(before, after); diff != "" {
				t.Errorf("the data dir changed:\n%s", diff)
			}
		})
	}

	// And the registry still works for a good push of the same manifest.
	if status, _, body := biDo(t, "PUT", base+"/v2/good/repo/manifests/latest", manifest, false); status != http.StatusCreated {
		t.Fatalf("good manifest PUT after the bad input: %d %s", status, body)
	}
}

// biDo sends one request and returns its status, headers and body. The
// path goes out exactly as given ("..", "%2e%2e" included).
func biDo(t *testing.T, method, url string, body []byte, chunked bool) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hides the length: sent chunked
		}
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(url, "/manifests/") {
		req.Header.Set("Accept", ociManifest+", application/vnd.oci.image.index.v1+json")
	}
	if method == "PUT" && strings.Contains(url, "/manifests/") {
		req.Header.Set("Content-Type", ociManifest)
	} else if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, biShort(url), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func biPushBlob(t *testing.T, base, repo string, content []byte) {
	t.Helper()
	status, hdr, body := biDo(t, "POST", base+"/v2/"+repo+"/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting upload: %d %s", status, body)
	}
	loc := hdr.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	status, _, body = biDo(t, "PUT", loc+sep+"digest="+digest.FromBytes(content).String(), content, false)
	if status != http.StatusCreated {
		t.Fatalf("completing upload: %d %s", status, body)
	}
}

func biShort(s string) string {
	if len(s) > 100 {
		return s[:60] + "…" + s[len(s)-30:]
	}
	return s
}

// biSnapshot lists every file and directory under dir with file sizes.
func biSnapshot(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			m[rel+"/"] = -1
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		m[rel] = info.Size()
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return m
}

func biDiff(before, after map[string]int64) string {
	var out []string
	for p, sz := range after {
		if bs, ok := before[p]; !ok {
			out = append(out, "+ "+p)
		} else if bs != sz {
			out = append(out, fmt.Sprintf("~ %s (%d -> %d bytes)", p, bs, sz))
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			out = append(out, "- "+p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
