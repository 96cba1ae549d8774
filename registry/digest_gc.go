package registry

import (
	"context"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// withAliases wraps the storage namespace given to storage.MarkAndSweep
// so that garbage collection keeps content referenced by a sha512 digest.
//
// Such content is stored under its sha256 with a sha512 link to it (see
// digest.go). MarkAndSweep marks the sha512 digest a manifest references
// but sweeps the sha256 blob, which nothing marked, and then fails on the
// second link to it: the content is lost. Through withAliases every
// manifest also references the sha256 that its non-canonical references
// link to in the repository, so both are marked.
func withAliases(ns distribution.Namespace, drv storagedriver.StorageDriver) distribution.Namespace {
	return aliasNamespace{Namespace: ns, drv: drv}
}

type aliasNamespace struct {
	distribution.Namespace
	drv storagedriver.StorageDriver
}

// Enumerate is distribution.RepositoryEnumerator, which MarkAndSweep needs.
func (n aliasNamespace) Enumerate(ctx context.Context, ingest func(string) error) error {
	return n.Namespace.(distribution.RepositoryEnumerator).Enumerate(ctx, ingest)
}

func (n aliasNamespace) Repository(ctx context.Context, name reference.Named) (distribution.Repository, error) {
	r, err := n.Namespace.Repository(ctx, name)
	if err != nil {
		return nil, err
	}
	return aliasRepository{Repository: r, drv: n.drv}, nil
}

type aliasRepository struct {
	distribution.Repository
	drv storagedriver.StorageDriver
}

func (r aliasRepository) Manifests(ctx context.Context, opts ...distribution.ManifestServiceOption) (distribution.ManifestService, error) {
	ms, err := r.Repository.Manifests(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return aliasManifests{ManifestService: ms, repo: r.Named().Name(), drv: r.drv}, nil
}

type aliasManifests struct {
	distribution.ManifestService
	repo string
	drv  storagedriver.StorageDriver
}

// Enumerate is distribution.ManifestEnumerator, which MarkAndSweep needs.
func (m aliasManifests) Enumerate(ctx context.Context, ingest func(digest.Digest) error) error {
	return m.ManifestService.(distribution.ManifestEnumerator).Enumerate(ctx, ingest)
}

func (m aliasManifests) Get(ctx context.Context, d digest.Digest, opts ...distribution.ManifestServiceOption) (distribution.Manifest, error) {
	mf, err := m.ManifestService.Get(ctx, d, opts...)
	if err != nil {
		return nil, err
	}
	var extra []ocispec.Descriptor
	for _, ref := range mf.References() {
		if ref.Digest.Algorithm() == digest.Canonical || ref.Digest.Validate() != nil {
			continue
		}
		for _, kind := range []string{"blobs", "manifests"} {
			if c, err := readLink(ctx, m.drv, m.repo, kind, ref.Digest); err == nil && c != ref.Digest {
				extra = append(extra, ocispec.Descriptor{MediaType: ref.MediaType, Digest: c, Size: ref.Size})
			}
		}
	}
	if len(extra) == 0 {
		return mf, nil
	}
	return aliasManifest{Manifest: mf, extra: extra}, nil
}

type aliasManifest struct {
	distribution.Manifest
	extra []ocispec.Descriptor
}

func (m aliasManifest) References() []ocispec.Descriptor {
	return append(m.Manifest.References(), m.extra...)
}
