package registry

import (
	"context"
	"errors"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The tag detail page's view of one manifest (Catalog.Image). It is
// the UI's view model; it stays here because it reads the catalog's
// unexported manifest and config readers.

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
	*Summary
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

// Image reads the manifest dgst of repo and, for an image, its config.
func (c *Catalog) Image(ctx context.Context, repo string, dgst digest.Digest) (*Image, error) {
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
	img := &Image{Repo: repo, Digest: dgst, Summary: sum, ManifestSize: int64(len(payload)),
		Annotations: raw.Annotations, Subject: raw.Subject, ConfigDesc: raw.Config}
	if img.Tags, err = c.TagsOf(ctx, repo, dgst); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	for _, m := range raw.Manifests {
		ch := Child{Digest: m.Digest, MediaType: m.MediaType, ArtifactType: m.ArtifactType, Size: m.Size}
		if p := m.Platform; p != nil {
			ch.Platform = platformString(p.OS, p.Architecture, p.Variant)
		}
		if cs, err := c.summary(ctx, r, m.Digest); err == nil {
			ch.Size = cs.Size
		}
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			ch.ArtifactType = "attestation"
		}
		img.Manifests = append(img.Manifests, ch)
	}
	if len(raw.Manifests) == 0 && isImageConfig(raw.Config.MediaType) {
		cfg, err := c.readConfig(ctx, r, raw.Config)
		if err != nil {
			return nil, err
		}
		img.Config = &cfg.Config
		img.History = cfg.History
		img.Layers = layersWithHistory(raw.Layers, cfg.History)
		img.Dockerfile = Dockerfile(cfg.History)
	} else {
		for _, l := range raw.Layers {
			img.Layers = append(img.Layers, Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size})
		}
	}
	return img, nil
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
