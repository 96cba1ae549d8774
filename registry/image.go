package registry

import (
	"context"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest is one stored manifest as the catalog reads it: its parts, its
// summary and, for an image, its config. The web UI builds its detail
// page from it (registry/ui).
type Manifest struct {
	Digest digest.Digest
	// Size is the size of the manifest itself.
	Size int64
	*Summary
	Config      ocispec.Descriptor
	Layers      []ocispec.Descriptor
	Manifests   []ocispec.Descriptor // of an index
	Subject     *ocispec.Descriptor
	Annotations map[string]string
	// ImageConfig and History come from an image's config (nil for an
	// index or an artifact).
	ImageConfig *ocispec.ImageConfig
	History     []ocispec.History
	// ChildSizes are the summarised sizes of an index's stored children.
	ChildSizes map[digest.Digest]int64
}

// IsImageConfig reports whether mt is the media type of an image config.
func IsImageConfig(mt string) bool { return isImageConfig(mt) }

// Manifest reads the manifest dgst of repo and, for an image, its config.
func (c *Catalog) Manifest(ctx context.Context, repo string, dgst digest.Digest) (*Manifest, error) {
	r, err := c.repository(ctx, repo)
	if err != nil {
		return nil, err
	}
	raw, payload, err := c.readManifest(ctx, r, dgst)
	if err != nil {
		return nil, err
	}
	sum, err := c.summary(ctx, r, dgst)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Digest: dgst, Size: int64(len(payload)), Summary: sum, Config: raw.Config, Layers: raw.Layers,
		Manifests: raw.Manifests, Subject: raw.Subject, Annotations: raw.Annotations, ChildSizes: map[digest.Digest]int64{}}
	for _, ch := range raw.Manifests {
		if cs, err := c.summary(ctx, r, ch.Digest); err == nil {
			m.ChildSizes[ch.Digest] = cs.Size
		}
	}
	if len(raw.Manifests) == 0 && isImageConfig(raw.Config.MediaType) {
		cfg, err := c.readConfig(ctx, r, raw.Config)
		if err != nil {
			return nil, err
		}
		m.ImageConfig, m.History = &cfg.Config, cfg.History
	}
	return m, nil
}
