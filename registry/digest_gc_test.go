package registry

import (
	"bytes"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/manifest/ocischema"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestGCKeepsSHA512Content: garbage collection through withAliases keeps a
// layer pushed and referenced by its sha512 digest, readable by it, and
// still removes what nothing references.
func TestGCKeepsSHA512Content(t *testing.T) {
	ctx := t.Context()
	drv := filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 10})
	ns, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	named, _ := reference.WithName("lab/app")
	repo, err := ns.Repository(ctx, named)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte, d digest.Digest) {
		t.Helper()
		w, err := repo.Blobs(ctx).Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(ctx, ocispec.Descriptor{Digest: d, Size: int64(len(b))}); err != nil {
			t.Fatalf("committing %s: %v", d, err)
		}
	}
	layer, cfg, junk := []byte("layer pushed by sha512"), []byte(`{"architecture":"amd64","os":"linux"}`), []byte("referenced by nothing")
	l512 := digest.SHA512.FromBytes(layer)
	put(layer, l512)
	put(cfg, digest.FromBytes(cfg))
	put(junk, digest.FromBytes(junk))
	m, err := ocischema.FromStruct(ocischema.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: l512, Size: int64(len(layer))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	md, err := ms.Put(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Tags(ctx).Tag(ctx, "v1", ocispec.Descriptor{Digest: md}); err != nil {
		t.Fatal(err)
	}

	if err := storage.MarkAndSweep(ctx, drv, withAliases(ns, drv), storage.GCOpts{Quiet: true}); err != nil {
		t.Fatalf("garbage collection: %v", err)
	}
	if b, err := repo.Blobs(ctx).Get(ctx, l512); err != nil || !bytes.Equal(b, layer) {
		t.Errorf("layer %s after GC: %q, %v", l512, b, err)
	}
	if _, err := ms.Get(ctx, md); err != nil {
		t.Errorf("manifest after GC: %v", err)
	}
	if _, err := ns.BlobStatter().Stat(ctx, digest.FromBytes(junk)); err != distribution.ErrBlobUnknown {
		t.Errorf("unreferenced blob after GC: %v, want it gone", err)
	}
}
