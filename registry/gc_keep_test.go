package registry_test

import (
	"context"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestGCKeep: an untagged manifest named in GCOptions.Keep (an image a
// swarm service runs or rolls back to) stays with its blobs and referrers
// under --remove-untagged, and the dry run says why; an untagged manifest
// nothing uses goes as before.
func TestGCKeep(t *testing.T) {
	addr, srv := testenv.Registry(t, registry.Options{})
	ctx := context.Background()
	blue := catImage(t, 3000)
	bd := testenv.Push(t, addr+"/keep/app:blue", blue)
	sig, _ := testenv.PushReferrer(t, addr+"/keep/app", blue, "application/vnd.dev.cosign.artifact.sig.v1+json",
		"application/vnd.dev.cosign.simplesigning.v1+json", []byte("signature-keep"))
	// The tag moves to a re-push: blue's old digest is untagged.
	testenv.Push(t, addr+"/keep/app:blue", catImage(t, 3100))
	unused := catImage(t, 2000)
	ud, _ := unused.Digest()
	testenv.Push(t, addr+"/keep/app@"+ud.String(), unused)

	keep := map[digest.Digest]string{digest.Digest(bd.String()): "used by service web (previous spec)"}
	dry, err := srv.GC(ctx, registry.GCOptions{DryRun: true, RemoveUntagged: true, Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.InUse) != 1 || dry.InUse[0].Digest.String() != bd.String() || dry.InUse[0].Reason != "used by service web (previous spec)" || dry.InUse[0].Repo != "keep/app" {
		t.Errorf("dry run InUse = %+v, want keep/app@%s used by service web", dry.InUse, bd)
	}
	for _, m := range dry.Manifests {
		if m.Digest.String() == bd.String() {
			t.Errorf("dry run would remove the kept manifest %s", bd)
		}
	}
	if len(dry.Manifests) != 1 || dry.Manifests[0].Digest.String() != ud.String() {
		t.Errorf("dry run would remove %+v, want only the unused %s", dry.Manifests, ud)
	}

	if _, err := srv.GC(ctx, registry.GCOptions{RemoveUntagged: true, Keep: keep}); err != nil {
		t.Fatal(err)
	}
	if err := pullable(t, addr+"/keep/app@"+bd.String()); err != nil {
		t.Errorf("the kept digest is not pullable after GC: %v", err)
	}
	if err := pullable(t, addr+"/keep/app@"+sig.String()); err != nil {
		t.Errorf("the kept digest's signature is not pullable after GC: %v", err)
	}
	if err := pullable(t, addr+"/keep/app@"+ud.String()); err == nil {
		t.Errorf("the unused untagged digest is still pullable after GC")
	}
	// Without Keep, the same GC removes it (and its signature).
	res, err := srv.GC(ctx, registry.GCOptions{RemoveUntagged: true})
	if err != nil {
		t.Fatal(err)
	}
	gone := map[string]bool{}
	for _, m := range res.Manifests {
		gone[m.Digest.String()] = true
	}
	if len(res.Manifests) != 2 || !gone[bd.String()] || !gone[sig.String()] {
		t.Errorf("GC without Keep removed %+v, want %s and its signature %s", res.Manifests, bd, sig)
	}
}
