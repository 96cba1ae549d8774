package ui

import (
	"context"
	"errors"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/labreg/labreg/registry"
)

// The tag detail page's view of one manifest, built from what the
// registry's catalog reads (registry.Manifest).

// Layer is one layer of an image with the history entry that made it.
type Layer struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type"`
	Size      int64         `json:"size"`
	CreatedBy string        `json:"created_by,omitempty"`
}

// Child is one manifest of an index.
type Child struct {
	Digest       digest.Digest `json:"digest"`
	MediaType    string        `json:"media_type"`
	Platform     string        `json:"platform,omitempty"`
	ArtifactType string        `json:"artifact_type,omitempty"`
	Size         int64         `json:"size"`
}

// Image is everything the tag detail page shows about one manifest.
type Image struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	// Tags point to this digest in Repo.
	Tags []string `json:"tags"`
	*registry.Summary
	ManifestSize int64               `json:"manifest_size"`
	Annotations  map[string]string   `json:"annotations,omitempty"`
	Subject      *ocispec.Descriptor `json:"subject_descriptor,omitempty"`
	// Index children (empty for an image).
	Manifests []Child `json:"manifests,omitempty"`
	// Image fields (empty for an index or artifact).
	Config     *ocispec.ImageConfig `json:"config,omitempty"`
	History    []ocispec.History    `json:"history,omitempty"`
	Layers     []Layer              `json:"layers,omitempty"`
	Dockerfile []string             `json:"dockerfile,omitempty"`
	ConfigDesc ocispec.Descriptor   `json:"config_descriptor"`
}

// imageOf builds the detail page's view of the manifest dgst of repo.
func imageOf(ctx context.Context, c Catalog, repo string, dgst digest.Digest) (*Image, error) {
	m, err := c.Manifest(ctx, repo, dgst)
	if err != nil {
		return nil, err
	}
	img := &Image{Repo: repo, Digest: dgst, Summary: m.Summary, ManifestSize: m.Size,
		Annotations: m.Annotations, Subject: m.Subject, ConfigDesc: m.Config}
	if img.Tags, err = c.TagsOf(ctx, repo, dgst); err != nil && !errors.Is(err, registry.ErrNotFound) {
		return nil, err
	}
	for _, cm := range m.Manifests {
		ch := Child{Digest: cm.Digest, MediaType: cm.MediaType, ArtifactType: cm.ArtifactType, Size: cm.Size}
		if p := cm.Platform; p != nil {
			ch.Platform = platformString(p.OS, p.Architecture, p.Variant)
		}
		if sz, ok := m.ChildSizes[cm.Digest]; ok {
			ch.Size = sz
		}
		if cm.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			ch.ArtifactType = "attestation"
		}
		img.Manifests = append(img.Manifests, ch)
	}
	if m.ImageConfig != nil {
		img.Config = m.ImageConfig
		img.History = m.History
		img.Layers = layersWithHistory(m.Layers, m.History)
		img.Dockerfile = Dockerfile(m.History)
	} else {
		for _, l := range m.Layers {
			img.Layers = append(img.Layers, Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size})
		}
	}
	return img, nil
}

// platformString is os/arch[/variant].
func platformString(os, arch, variant string) string {
	s := os + "/" + arch
	if variant != "" {
		s += "/" + variant
	}
	return s
}

// layersWithHistory pairs each layer with the history entry that made it:
// history entries that are not empty_layer match layers in order.
func layersWithHistory(layers []ocispec.Descriptor, hist []ocispec.History) []Layer {
	out := make([]Layer, len(layers))
	h := 0
	for i, l := range layers {
		out[i] = Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size}
		for h < len(hist) && hist[h].EmptyLayer {
			h++
		}
		if h < len(hist) {
			out[i].CreatedBy = hist[h].CreatedBy
			h++
		}
	}
	return out
}

// Dockerfile reconstructs Dockerfile instructions from image history:
// "/bin/sh -c #(nop) CMD [...]" becomes "CMD [...]", "/bin/sh -c make"
// becomes "RUN make", BuildKit's "# buildkit" suffix is dropped.
func Dockerfile(hist []ocispec.History) []string {
	var out []string
	for _, h := range hist {
		line := strings.TrimSpace(h.CreatedBy)
		if line == "" {
			continue
		}
		line = strings.TrimSuffix(line, " # buildkit")
		switch {
		case strings.HasPrefix(line, "/bin/sh -c #(nop) "):
			line = strings.TrimSpace(strings.TrimPrefix(line, "/bin/sh -c #(nop) "))
		case strings.HasPrefix(line, "/bin/sh -c "):
			line = "RUN " + strings.TrimPrefix(line, "/bin/sh -c ")
		case strings.HasPrefix(line, "|"): // "|2 A=1 B=2 /bin/sh -c make": RUN with build args
			if i := strings.Index(line, "/bin/sh -c "); i >= 0 {
				line = "RUN " + line[i+len("/bin/sh -c "):]
			}
		}
		out = append(out, line)
	}
	return out
}
