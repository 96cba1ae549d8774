package registry_test

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// rfPush PUTs a manifest (by digest when byDigest, else by tag "t") and
// returns the OCI-Subject header of the answer.
func rfPush(t *testing.T, base, repo, ref string, m []byte, mediaType string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "PUT", base+"/v2/"+repo+"/manifests/"+ref, strings.NewReader(string(m)))
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s:%s: %s", repo, ref, resp.Status)
	}
	return resp.Header.Get("OCI-Subject")
}

// rfList calls the referrers API and returns the digests listed, in order,
// and the OCI-Filters-Applied header.
func rfList(t *testing.T, base, repo string, subject digest.Digest, artifactType, user, pass string) (int, []string, string) {
	t.Helper()
	u := base + "/v2/" + repo + "/referrers/" + subject.String()
	if artifactType != "" {
		u += "?artifactType=" + artifactType
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", u, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Errors []struct{ Code string } }
		json.NewDecoder(resp.Body).Decode(&e)
		if len(e.Errors) == 0 {
			t.Errorf("referrers %s: %s without an OCI error body", subject, resp.Status)
		}
		return resp.StatusCode, nil, ""
	}
	if ct := resp.Header.Get("Content-Type"); ct != ocispec.MediaTypeImageIndex {
		t.Errorf("referrers Content-Type %q", ct)
	}
	var idx ocispec.Index
	if err := json.NewDecoder(resp.Body).Decode(&idx); err != nil {
		t.Fatal(err)
	}
	if idx.MediaType != ocispec.MediaTypeImageIndex || idx.SchemaVersion != 2 || idx.Manifests == nil {
		t.Errorf("referrers response is not an OCI index: %+v", idx)
	}
	var ds []string
	for _, d := range idx.Manifests {
		ds = append(ds, d.Digest.String())
	}
	return resp.StatusCode, ds, resp.Header.Get("OCI-Filters-Applied")
}

func rfDelete(t *testing.T, base, repo string, d digest.Digest) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "DELETE", base+"/v2/"+repo+"/manifests/"+d.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE %s: %s", d, resp.Status)
	}
}

func rfJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReferrers pushes an image and artifacts that refer to it and checks
// the referrers API and Server.Referrers: listing, artifactType filter and
// its fallback to the config media type, OCI-Subject, deletes (by sha256
// and by sha512), and that the index survives a restart and is rebuilt
// when lost.
func TestReferrers(t *testing.T) {
	data := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: data})
	base := "http://" + addr
	const repo = "lab/app"

	empty := []byte("{}")
	biPushBlob(t, base, repo, empty)
	emptyDesc := ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: digest.FromBytes(empty), Size: 2}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	biPushBlob(t, base, repo, cfg)

	image := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))},
		Layers: []ocispec.Descriptor{}})
	subject := digest.FromBytes(image)
	if got := rfPush(t, base, repo, "v1", image, ocispec.MediaTypeImageManifest); got != "" {
		t.Errorf("image without subject: OCI-Subject %q", got)
	}
	// The first query scans the repository once (the index may predate
	// labreg); from then on only pushes and deletes update it.
	if status, got, _ := rfList(t, base, repo, subject, "", "", ""); status != http.StatusOK || len(got) != 0 {
		t.Fatalf("referrers before any: %d %v", status, got)
	}
	subjDesc := &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: int64(len(image))}

	sig := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature", Config: emptyDesc, Layers: []ocispec.Descriptor{emptyDesc},
		Subject: subjDesc, Annotations: map[string]string{"org.example.signer": "lab"}})
	// No artifactType: the config media type stands in for it.
	sbom := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: "application/vnd.example.sbom.config", Digest: emptyDesc.Digest, Size: 2},
		Layers: []ocispec.Descriptor{emptyDesc}, Subject: subjDesc})
	list := rfJSON(t, ocispec.Index{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageIndex,
		ArtifactType: "application/vnd.example.bundle", Manifests: []ocispec.Descriptor{}, Subject: subjDesc})
	// A referrer pushed by sha512.
	att := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature", Config: emptyDesc, Layers: []ocispec.Descriptor{emptyDesc},
		Subject: subjDesc, Annotations: map[string]string{"n": "512"}})
	sum := sha512.Sum512(att)
	att512 := digest.Digest("sha512:" + hex.EncodeToString(sum[:]))
	// A subject that was never pushed.
	ghost := digest.FromString("not pushed")
	orphan := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature", Config: emptyDesc, Layers: []ocispec.Descriptor{emptyDesc},
		Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: ghost, Size: 123}})

	for _, p := range []struct {
		ref  string
		body []byte
		mt   string
		subj digest.Digest
	}{
		{digest.FromBytes(sig).String(), sig, ocispec.MediaTypeImageManifest, subject},
		{"sbom", sbom, ocispec.MediaTypeImageManifest, subject}, // by tag
		{digest.FromBytes(list).String(), list, ocispec.MediaTypeImageIndex, subject},
		{att512.String(), att, ocispec.MediaTypeImageManifest, subject},
		{digest.FromBytes(orphan).String(), orphan, ocispec.MediaTypeImageManifest, ghost},
	} {
		if got := rfPush(t, base, repo, p.ref, p.body, p.mt); got != p.subj.String() {
			t.Errorf("PUT %s: OCI-Subject %q, want %s", p.ref, got, p.subj)
		}
	}
	sigD, sbomD, listD := digest.FromBytes(sig).String(), digest.FromBytes(sbom).String(), digest.FromBytes(list).String()
	sorted := func(ds ...string) []string { slices.Sort(ds); return ds }

	check := func(t *testing.T, base string) {
		t.Helper()
		for _, tt := range []struct {
			name         string
			subject      digest.Digest
			artifactType string
			want         []string
		}{
			{"all", subject, "", sorted(sigD, sbomD, listD, att512.String())},
			{"signatures", subject, "application/vnd.example.signature", sorted(sigD, att512.String())},
			{"config media type as artifactType", subject, "application/vnd.example.sbom.config", []string{sbomD}},
			{"index artifactType", subject, "application/vnd.example.bundle", []string{listD}},
			{"no match", subject, "application/vnd.example.none", nil},
			{"subject never pushed", ghost, "", []string{digest.FromBytes(orphan).String()}},
			{"no referrers", digest.FromBytes(sig), "", nil},
			{"unknown sha512 subject", att512, "", nil},
		} {
			status, got, filters := rfList(t, base, repo, tt.subject, tt.artifactType, "", "")
			if status != http.StatusOK || !slices.Equal(got, tt.want) {
				t.Errorf("%s: %d %v, want 200 %v", tt.name, status, got, tt.want)
			}
			if wantF := map[bool]string{true: "artifactType"}[tt.artifactType != ""]; filters != wantF {
				t.Errorf("%s: OCI-Filters-Applied %q, want %q", tt.name, filters, wantF)
			}
		}
	}
	check(t, base)

	// The descriptors are the ones the spec asks for.
	descs, err := srv.Referrers(t.Context(), repo, subject, "")
	if err != nil {
		t.Fatal(err)
	}
	byDigest := map[string]ocispec.Descriptor{}
	for _, d := range descs {
		byDigest[d.Digest.String()] = d
	}
	if d := byDigest[sigD]; d.MediaType != ocispec.MediaTypeImageManifest || d.Size != int64(len(sig)) ||
		d.ArtifactType != "application/vnd.example.signature" || d.Annotations["org.example.signer"] != "lab" {
		t.Errorf("signature descriptor %+v", d)
	}
	if d := byDigest[sbomD]; d.ArtifactType != "application/vnd.example.sbom.config" {
		t.Errorf("sbom descriptor %+v", d)
	}
	if d := byDigest[listD]; d.MediaType != ocispec.MediaTypeImageIndex || d.ArtifactType != "application/vnd.example.bundle" {
		t.Errorf("index descriptor %+v", d)
	}
	if _, err := srv.Referrers(t.Context(), "Bad/Name", subject, ""); err == nil {
		t.Error("Referrers accepted an invalid repository name")
	}

	t.Run("restart", func(t *testing.T) {
		addr2, _ := testenv.Registry(t, registry.Options{DataDir: data})
		check(t, "http://"+addr2)
	})
	t.Run("rebuilt when lost", func(t *testing.T) {
		// The index lives in the storage (beside distribution's tree).
		idx := filepath.Join(data, "storage", "labreg", "referrers")
		if _, err := os.Stat(idx); err != nil {
			t.Fatalf("no referrer index in the storage: %v", err)
		}
		if err := os.RemoveAll(idx); err != nil {
			t.Fatal(err)
		}
		addr2, _ := testenv.Registry(t, registry.Options{DataDir: data})
		check(t, "http://"+addr2)
	})

	t.Run("delete", func(t *testing.T) {
		rfDelete(t, base, repo, digest.FromBytes(sbom))
		rfDelete(t, base, repo, att512)
		_, got, _ := rfList(t, base, repo, subject, "", "", "")
		if want := sorted(sigD, listD); !slices.Equal(got, want) {
			t.Errorf("after deletes: %v, want %v", got, want)
		}
		// Deleting by sha512 deleted the manifest, not just the name.
		for _, ref := range []string{att512.String(), digest.FromBytes(att).String()} {
			resp, err := http.Head(base + "/v2/" + repo + "/manifests/" + ref)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("HEAD %s after delete: %s", ref, resp.Status)
			}
		}
		// A manifest removed behind the index's back (garbage
		// collection) is not listed.
		link := filepath.Join(data, "storage/docker/registry/v2/repositories", repo,
			"_manifests/revisions/sha256", digest.FromBytes(list).Encoded())
		if err := os.RemoveAll(link); err != nil {
			t.Fatal(err)
		}
		if _, got, _ := rfList(t, base, repo, subject, "", "", ""); !slices.Equal(got, []string{sigD}) {
			t.Errorf("after removing %s from storage: %v", listD, got)
		}
	})
}

var ocispecVersioned = specs.Versioned{SchemaVersion: 2}

// TestReferrersAuth: with htpasswd on, the referrers API wants the same
// credentials as the rest of the registry.
func TestReferrersAuth(t *testing.T) {
	dir := t.TempDir()
	htpasswd := testenv.Htpasswd(t, "lab", "s3cret")
	addr, _ := testenv.Registry(t, registry.Options{DataDir: filepath.Join(dir, "data"), Htpasswd: htpasswd})
	base := "http://" + addr
	subject := digest.FromString("x")
	for _, tt := range []struct {
		name, user, pass string
		want             int
	}{
		{"no credentials", "", "", http.StatusUnauthorized},
		{"wrong password", "lab", "nope", http.StatusUnauthorized},
		{"good credentials", "lab", "s3cret", http.StatusOK},
	} {
		if status, _, _ := rfList(t, base, "lab/app", subject, "", tt.user, tt.pass); status != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, status, tt.want)
		}
	}
}

// TestUIDeleteDropsAliasesAndReferrers is #14's bug 5: a manifest
// deleted through the UI (Catalog.DeleteManifest) by its sha256 left its
// sha512 alias link and its referrer entry, so the referrers API still
// listed the deleted artifact. Every delete now goes through the one
// place where a manifest changes, which also records one event.
func TestUIDeleteDropsAliasesAndReferrers(t *testing.T) {
	data := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: data})
	base := "http://" + addr
	const repo = "lab/ui"

	empty := []byte("{}")
	biPushBlob(t, base, repo, empty)
	emptyDesc := ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: digest.FromBytes(empty), Size: 2}
	image := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		Config: emptyDesc, Layers: []ocispec.Descriptor{}})
	rfPush(t, base, repo, "v1", image, ocispec.MediaTypeImageManifest)
	subject := digest.FromBytes(image)
	art := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature", Config: emptyDesc, Layers: []ocispec.Descriptor{emptyDesc},
		Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: int64(len(image))}})
	art512 := digest.SHA512.FromBytes(art)
	rfPush(t, base, repo, art512.String(), art, ocispec.MediaTypeImageManifest)
	if _, got, _ := rfList(t, base, repo, subject, "", "", ""); !slices.Equal(got, []string{art512.String()}) {
		t.Fatalf("referrers after the push: %v, want [%s]", got, art512)
	}

	ctx := registry.WithActor(t.Context(), registry.Actor{User: "ann", Via: "ui"})
	if _, err := srv.Catalog().DeleteManifest(ctx, repo, digest.FromBytes(art)); err != nil {
		t.Fatal(err)
	}
	if _, got, _ := rfList(t, base, repo, subject, "", "", ""); len(got) != 0 {
		t.Errorf("referrers after the UI deleted the artifact: %v, want none", got)
	}
	alias := filepath.Join(data, "storage", "docker", "registry", "v2", "repositories", repo,
		"_manifests", "revisions", "sha512", art512.Encoded(), "link")
	if _, err := os.Stat(alias); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sha512 alias link is still there (%v)", err)
	}
	if resp, err := http.Head(base + "/v2/" + repo + "/manifests/" + art512.String()); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusNotFound {
		t.Errorf("HEAD by sha512 after the delete: %s, want 404", resp.Status)
	}
	evs, _ := srv.Events().Page(0, 100, func(e registry.Event) bool { return e.Action == "delete" })
	if len(evs) != 1 || evs[0].Via != "ui" || evs[0].User != "ann" || evs[0].Digest != digest.FromBytes(art) {
		t.Errorf("delete events %+v, want one by ann via ui", evs)
	}
}
