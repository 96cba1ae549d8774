package registry_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestScrub damages a data dir (a flipped byte in a blob, a tag linked to
// a missing manifest, stray temporary files, an abandoned upload), checks
// that scrub reports each and changes nothing, that --repair fixes all but
// the image that lost its layer, that pushing that image again makes the
// storage whole, and that the OCI conformance suite passes afterwards.
func TestScrub(t *testing.T) {
	dir := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: dir})
	img := catImage(t, 4000)
	testenv.Push(t, addr+"/scrub/app:1", img)
	testenv.Push(t, addr+"/scrub/app:2", catImage(t, 3000))
	ctx := context.Background()
	if rep, err := srv.Scrub(ctx, registry.ScrubOptions{}); err != nil || len(rep.Problems) > 0 || rep.Blobs != 6 || rep.Tags != 2 {
		t.Fatalf("scrub of a sound registry: %+v %v", rep, err)
	}

	v2 := filepath.Join(dir, "storage/docker/registry/v2")
	repo := filepath.Join(v2, "repositories/scrub/app")
	m, _ := img.Manifest()
	layer := m.Layers[0].Digest
	blob := filepath.Join(v2, "blobs/sha256", layer.Hex[:2], layer.Hex, "data")
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	os.WriteFile(blob, b, 0o644)
	ghost := "sha256:" + strings.Repeat("ab", 32)
	old := time.Now().Add(-48 * time.Hour)
	testenv.WriteFiles(t, dir, map[string]string{
		"storage/docker/registry/v2/repositories/scrub/app/_manifests/tags/ghost/current/link":                  ghost,
		"storage/docker/registry/v2/repositories/scrub/app/_manifests/tags/1/current/link.0123456789abcdef.tmp": "sha256:",
		"events.jsonl.fedcba9876543210.tmp": "{",
		"storage/docker/registry/v2/repositories/scrub/app/_uploads/0c1d2e3f-aaaa-bbbb-cccc-000000000001/startedat": old.Format(time.RFC3339),
	})
	for _, p := range []string{
		filepath.Join(repo, "_manifests/tags/1/current/link.0123456789abcdef.tmp"),
		filepath.Join(dir, "events.jsonl.fedcba9876543210.tmp"),
	} {
		os.Chtimes(p, old, old)
	}

	kinds := func(rep *registry.ScrubReport, repaired bool) string {
		var k []string
		for _, p := range rep.Problems {
			if p.Repaired == repaired {
				k = append(k, p.Kind)
			}
		}
		sort.Strings(k)
		return strings.Join(k, ",")
	}
	const found = "corrupt_blob,dangling_tag,missing_reference,orphan_upload,stray_temp,stray_temp"
	rep, err := registry.OfflineScrub(ctx, registry.Options{DataDir: dir}, registry.ScrubOptions{}) // a check beside the server is fine
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(rep, false); got != found {
		t.Errorf("scrub found %s; want %s\n%+v", got, found, rep.Problems)
	}
	for _, p := range rep.Problems {
		switch {
		case p.Kind == "corrupt_blob" && p.Digest.String() != layer.String():
			t.Errorf("corrupt blob reported: %s, want %s", p.Digest, layer)
		case p.Kind == "dangling_tag" && (p.Tag != "ghost" || p.Repo != "scrub/app"):
			t.Errorf("dangling tag reported: %s:%s, want scrub/app:ghost", p.Repo, p.Tag)
		case strings.HasPrefix(p.Path, "/"):
			t.Errorf("a report path is not relative to the data dir: %s", p.Path)
		}
	}
	if _, err := os.Stat(blob); err != nil {
		t.Errorf("a check (no --repair) changed the storage: %v", err)
	}
	if _, err := registry.OfflineScrub(ctx, registry.Options{DataDir: dir}, registry.ScrubOptions{Repair: true}); err == nil {
		t.Errorf("an offline repair beside a running server did not refuse")
	}

	rep, err = srv.Scrub(ctx, registry.ScrubOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, left := kinds(rep, true), kinds(rep, false); got != "corrupt_blob,dangling_tag,orphan_upload,stray_temp,stray_temp" || left != "missing_reference" {
		t.Errorf("repair fixed %s and left %s; want all but missing_reference fixed\n%+v", got, left, rep.Problems)
	}
	if q, _ := filepath.Glob(filepath.Join(dir, "quarantine", layer.Hex+".*")); len(q) != 1 {
		t.Errorf("the corrupt blob is not kept in quarantine: %v", q)
	}
	// The layer the image lost is pushed again (docker push checks each
	// blob; go-containerregistry skips an image whose manifest exists).
	r, _ := name.NewRepository(addr+"/scrub/app", name.Insecure)
	l, _ := img.LayerByDigest(layer)
	if err := remote.WriteLayer(r, l); err != nil {
		t.Fatalf("pushing the lost layer again: %v", err)
	}
	rep, err = srv.Scrub(ctx, registry.ScrubOptions{})
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("scrub after repair and a push: %+v %v", rep, err)
	}
	if ro, why := srv.ReadOnlyState(); ro {
		t.Fatalf("read-only after scrub: %s", why)
	}
	runConformance(t, addr)
}
