package registry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest summaries for the catalog and their cache file: content is
// immutable, so a summary is read once per digest.

// Summary is what the catalog knows about one manifest. Content is
// immutable, so summaries are cached by digest for the process lifetime.
type Summary struct {
	MediaType    string `json:"media_type"`
	ArtifactType string `json:"artifact_type,omitempty"`
	// Size is the compressed size: config and layers of an image, the
	// distinct config and layer blobs of every child of an index.
	Size int64 `json:"size"`
	// Created comes from the image config (the newest child of an index).
	Created time.Time `json:"created,omitzero"`
	// Platforms lists os/arch[/variant] of an image or of each child of an index.
	Platforms []string `json:"platforms,omitempty"`
	// Subject is the manifest this one refers to (signatures, SBOMs).
	Subject digest.Digest `json:"subject,omitempty"`

	layers map[digest.Digest]int64 // the config and layer blobs it references (of every child of an index)
}

// IsIndex reports whether the manifest is an image index or manifest list.
func (s *Summary) IsIndex() bool {
	return s != nil && (s.MediaType == ocispec.MediaTypeImageIndex || s.MediaType == mediaTypeManifestList)
}

const mediaTypeManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"

// cachedSummary is one line of the summary cache file.
type cachedSummary struct {
	Digest digest.Digest           `json:"d"`
	S      *Summary                `json:"s"`
	Layers map[digest.Digest]int64 `json:"l"`
}

// startCache starts reading the summary cache file, once. Building the
// whole index waits for it; one repository's page does not (reading its
// manifests is quicker than reading every summary).
func (c *Catalog) startCache() {
	c.cacheOnce.Do(func() {
		go func() {
			c.loadCache()
			close(c.cacheReady)
		}()
	})
}

// loadCache reads the summary cache file.
func (c *Catalog) loadCache() {
	f, err := os.Open(c.cache)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	read := map[digest.Digest]*Summary{}
	lines := 0
	for sc.Scan() {
		lines++
		var cs cachedSummary
		if json.Unmarshal(sc.Bytes(), &cs) != nil || cs.S == nil || cs.Digest.Validate() != nil {
			continue // a torn last line after a crash
		}
		cs.S.layers = cs.Layers
		read[cs.Digest] = cs.S
	}
	c.cacheMu.Lock()
	c.cacheLines += lines
	c.cacheMu.Unlock()
	c.sumsLock.Lock()
	defer c.sumsLock.Unlock()
	for d, s := range read {
		if _, ok := c.sums[d]; !ok {
			c.sums[d] = s
		}
	}
}

// saveSummary appends one summary to the cache file; failures only cost
// the next start a re-read.
func (c *Catalog) saveSummary(d digest.Digest, s *Summary) {
	b, err := json.Marshal(cachedSummary{Digest: d, S: s, Layers: s.layers})
	if err != nil || c.cache == "" {
		return
	}
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if appendLine(c.cache, append(b, '\n')) == nil {
		c.cacheLines++
	}
}

// compactCache rewrites the summary cache file with one line per
// manifest a tag of the index points to, when it holds many more lines
// than that: summaries of deleted or untagged manifests, and the
// duplicates of summaries read twice at once. An index's children are
// dropped too (they are read again only if the index's own summary is).
// It does nothing until the file has been read and the index loaded.
func (c *Catalog) compactCache() error {
	if c.cache == "" {
		return nil
	}
	select {
	case <-c.cacheReady:
	default:
		return nil
	}
	c.mu.Lock()
	if !c.loaded {
		c.mu.Unlock()
		return nil
	}
	live := map[digest.Digest]bool{}
	for _, e := range c.repos {
		for _, t := range e.tags {
			live[t.digest] = true
		}
	}
	c.mu.Unlock()
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cacheLines <= len(live)+len(live)/4+100 {
		return nil
	}
	var b bytes.Buffer
	n := 0
	c.sumsLock.Lock()
	for d := range live {
		s, ok := c.sums[d]
		if !ok {
			continue
		}
		line, err := json.Marshal(cachedSummary{Digest: d, S: s, Layers: s.layers})
		if err != nil {
			continue
		}
		b.Write(line)
		b.WriteByte('\n')
		n++
	}
	c.sumsLock.Unlock()
	if err := writeFileAtomic(c.cache, b.Bytes()); err != nil {
		return fmt.Errorf("rewriting %s: %w", c.cache, err)
	}
	if c.log != nil {
		c.log.Info("compacted the summary cache", "lines_before", c.cacheLines, "lines", n)
	}
	c.cacheLines = n
	return nil
}

type rawManifest struct {
	MediaType    string               `json:"mediaType"`
	ArtifactType string               `json:"artifactType"`
	Config       ocispec.Descriptor   `json:"config"`
	Layers       []ocispec.Descriptor `json:"layers"`
	Manifests    []ocispec.Descriptor `json:"manifests"`
	Subject      *ocispec.Descriptor  `json:"subject"`
	Annotations  map[string]string    `json:"annotations"`
}

func (c *Catalog) readManifest(ctx context.Context, repo distribution.Repository, dgst digest.Digest) (*rawManifest, []byte, error) {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("opening manifests of %s: %w", repo.Named().Name(), err)
	}
	m, err := ms.Get(ctx, dgst)
	if err != nil {
		var unknown distribution.ErrManifestUnknownRevision
		if errors.As(err, &unknown) || isPathNotFound(err) {
			return nil, nil, fmt.Errorf("manifest %s@%s: %w", repo.Named().Name(), dgst, ErrNotFound)
		}
		return nil, nil, fmt.Errorf("reading manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	mt, payload, err := m.Payload()
	if err != nil {
		return nil, nil, fmt.Errorf("reading manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	var raw rawManifest
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, nil, fmt.Errorf("decoding manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	if raw.MediaType == "" {
		raw.MediaType = mt
	}
	return &raw, payload, nil
}

// imageConfig is the part of an image config labreg shows.
type imageConfig struct {
	Created      *time.Time          `json:"created"`
	Architecture string              `json:"architecture"`
	OS           string              `json:"os"`
	Variant      string              `json:"variant"`
	Config       ocispec.ImageConfig `json:"config"`
	History      []ocispec.History   `json:"history"`
}

func isImageConfig(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == "application/vnd.docker.container.image.v1+json"
}

func (c *Catalog) readConfig(ctx context.Context, repo distribution.Repository, desc ocispec.Descriptor) (*imageConfig, error) {
	b, err := repo.Blobs(ctx).Get(ctx, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading config %s of %s: %w", desc.Digest, repo.Named().Name(), err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config %s of %s: %w", desc.Digest, repo.Named().Name(), err)
	}
	return &cfg, nil
}

// summary returns the cached summary of dgst, reading it from repo on a miss.
func (c *Catalog) summary(ctx context.Context, repo distribution.Repository, dgst digest.Digest) (*Summary, error) {
	c.sumsLock.Lock()
	s, ok := c.sums[dgst]
	c.sumsLock.Unlock()
	if ok {
		return s, nil
	}
	raw, _, err := c.readManifest(ctx, repo, dgst)
	if err != nil {
		return nil, err
	}
	s = &Summary{MediaType: raw.MediaType, ArtifactType: raw.ArtifactType,
		layers: map[digest.Digest]int64{}}
	if raw.Subject != nil {
		s.Subject = raw.Subject.Digest
	}
	if len(raw.Manifests) > 0 || s.IsIndex() {
		for _, child := range raw.Manifests {
			cs, err := c.summary(ctx, repo, child.Digest)
			if errors.Is(err, ErrNotFound) { // an index may name absent children
				continue
			}
			if err != nil {
				return nil, err
			}
			for d, sz := range cs.layers {
				s.layers[d] = sz
			}
			if p := child.Platform; p != nil && p.OS != "unknown" {
				s.Platforms = append(s.Platforms, platformString(p.OS, p.Architecture, p.Variant))
			}
			if cs.Created.After(s.Created) {
				s.Created = cs.Created
			}
		}
	} else {
		if raw.Config.Digest != "" {
			s.layers[raw.Config.Digest] = raw.Config.Size
		}
		for _, l := range raw.Layers {
			s.layers[l.Digest] = l.Size
		}
		if isImageConfig(raw.Config.MediaType) {
			cfg, err := c.readConfig(ctx, repo, raw.Config)
			if err != nil {
				return nil, err
			}
			if cfg.Created != nil {
				s.Created = cfg.Created.UTC()
			}
			if cfg.OS != "" {
				s.Platforms = []string{platformString(cfg.OS, cfg.Architecture, cfg.Variant)}
			}
		} else if s.ArtifactType == "" {
			s.ArtifactType = raw.Config.MediaType
		}
		if t, err := time.Parse(time.RFC3339, raw.Annotations[ocispec.AnnotationCreated]); err == nil && s.Created.IsZero() {
			s.Created = t.UTC()
		}
	}
	// The size shown is what a pull of every platform transfers: config
	// and layer blobs, each once.
	for _, sz := range s.layers {
		s.Size += sz
	}
	c.sumsLock.Lock()
	c.sums[dgst] = s
	c.sumsLock.Unlock()
	c.saveSummary(dgst, s)
	return s, nil
}

func platformString(os, arch, variant string) string {
	p := os + "/" + arch
	if variant != "" {
		p += "/" + variant
	}
	return p
}
