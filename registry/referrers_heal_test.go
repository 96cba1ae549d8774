package registry_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// referrerManifest uploads the blobs of an OCI artifact that refers to
// subj (content its one layer) to repo and returns its manifest, not
// pushed yet.
func referrerManifest(t *testing.T, addr, repo string, subj v1.Image, content string) ([]byte, digest.Digest) {
	t.Helper()
	r, err := name.NewRepository(addr+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	layer := static.NewLayer([]byte(content), "text/plain")
	for _, l := range []v1.Layer{cfg, layer} {
		if err := remote.WriteLayer(r, l); err != nil {
			t.Fatal(err)
		}
	}
	cd, _ := cfg.Digest()
	ld, _ := layer.Digest()
	sd, _ := subj.Digest()
	ssz, _ := subj.Size()
	raw := rfJSON(t, map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1), "artifactType": "application/vnd.example.note",
		"config":  map[string]any{"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd.String(), "size": 2},
		"layers":  []any{map[string]any{"mediaType": "text/plain", "digest": ld.String(), "size": len(content)}},
		"subject": map[string]any{"mediaType": string(types.OCIManifestSchema1), "digest": sd.String(), "size": ssz},
	})
	return raw, digest.FromBytes(raw)
}

// putStatus PUTs a manifest by digest and returns the status.
func putStatus(t *testing.T, addr, repo string, raw []byte) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "PUT", "http://"+addr+"/v2/"+repo+"/manifests/"+digest.FromBytes(raw).String(), bytes.NewReader(raw))
	req.Header.Set("Content-Type", string(types.OCIManifestSchema1))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReferrersHealAfterFailedUpdate: a referrer distribution stored but
// labreg failed to index (its push answered 500) is indexed by the next
// referrers query of the repository, although the repository was scanned
// before, and by the next referrer pushed there.
func TestReferrersHealAfterFailedUpdate(t *testing.T) {
	dir := t.TempDir()
	addr, _ := testenv.Registry(t, registry.Options{DataDir: dir})
	const repo = "heal/app"
	base := "http://" + addr
	subjects := filepath.Join(dir, "storage/labreg/referrers", repo, "_subjects/sha256")

	// newSubject pushes an image and queries its referrers (so the
	// repository is scanned), then puts a file where the subject's
	// directory of the index goes: indexing a referrer of it fails after
	// distribution has stored the referrer, until unblock.
	newSubject := func(t *testing.T, tag string) (subj v1.Image, subject digest.Digest, unblock func()) {
		subj = catImage(t, 500)
		testenv.Push(t, addr+"/"+repo+":"+tag, subj)
		sd, _ := subj.Digest()
		subject = digest.Digest(sd.String())
		if _, got, _ := rfList(t, base, repo, subject, "", "", ""); len(got) != 0 {
			t.Fatalf("referrers before any: %v", got)
		}
		if err := os.MkdirAll(subjects, 0o755); err != nil {
			t.Fatal(err)
		}
		obstacle := filepath.Join(subjects, subject.Encoded())
		if err := os.WriteFile(obstacle, []byte("in the way"), 0o644); err != nil {
			t.Fatal(err)
		}
		return subj, subject, func() {
			if err := os.Remove(obstacle); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("the next query", func(t *testing.T) {
		subj, subject, unblock := newSubject(t, "1")
		raw, d := referrerManifest(t, addr, repo, subj, "first note")
		if st := putStatus(t, addr, repo, raw); st != http.StatusInternalServerError {
			t.Fatalf("pushing a referrer that cannot be indexed: %d, want 500", st)
		}
		unblock()
		if _, got, _ := rfList(t, base, repo, subject, "", "", ""); !slices.Equal(got, []string{d.String()}) {
			t.Errorf("referrers after the failed update: %v, want [%s]", got, d)
		}
	})

	t.Run("the next write", func(t *testing.T) {
		subj, subject, unblock := newSubject(t, "2")
		raw, d := referrerManifest(t, addr, repo, subj, "second note")
		if st := putStatus(t, addr, repo, raw); st != http.StatusInternalServerError {
			t.Fatalf("pushing a referrer that cannot be indexed: %d, want 500", st)
		}
		unblock()
		raw3, d3 := referrerManifest(t, addr, repo, subj, "third note")
		if st := putStatus(t, addr, repo, raw3); st != http.StatusCreated {
			t.Fatalf("pushing a referrer: %d", st)
		}
		// Read from the index itself: a query would heal it.
		for _, d := range []digest.Digest{d, d3} {
			b, err := os.ReadFile(filepath.Join(subjects, subject.Encoded(), "sha256-"+d.Encoded()+".json"))
			var desc struct{ Digest digest.Digest }
			if err != nil || json.Unmarshal(b, &desc) != nil || desc.Digest != d {
				t.Errorf("index entry of %s after the next push: %q %v", d, b, err)
			}
		}
	})

	// Nothing is left pending once indexed.
	if left, _ := os.ReadDir(filepath.Join(dir, "storage/labreg/referrers", repo, "_pending")); len(left) != 0 {
		t.Errorf("pending records left: %v", left)
	}
}
