package deploy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// DefaultLayout is the OCI layout directory `labreg build --no-push`
// writes when not told otherwise (build.DefaultLayout, which this package
// does not import; a test in cmd/labreg holds them equal).
const DefaultLayout = "oci-layout"

// Annotation keys naming an image in an OCI layout's index. labreg build
// (native and Docker engines) puts the full reference in ref.name; BuildKit's
// OCI exporter puts only the tag there and the full name in
// io.containerd.image.name.
const (
	annotationRefName   = "org.opencontainers.image.ref.name"
	annotationImageName = "io.containerd.image.name"
)

// layoutMatch finds the manifest in the OCI layout at dir named full (a
// resolved "host/repo:tag"). A name with the same repository and tag under
// another registry host also matches (built with --registry localhost:5000,
// deployed with --advertise 10.0.0.1:5000), but an exact name wins; among
// equals the last entry (the newest append) wins. ok is false when dir is
// not an OCI layout or holds no such image.
func layoutMatch(dir, full string) (desc v1.Descriptor, ok bool, err error) {
	if _, err := os.Stat(filepath.Join(dir, "index.json")); errors.Is(err, fs.ErrNotExist) {
		return desc, false, nil
	}
	want, err := name.NewTag(full, name.Insecure)
	if err != nil {
		return desc, false, fmt.Errorf("parsing image reference %q: %w", full, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return desc, false, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return desc, false, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	best := 0 // 2: same name, 1: same repository and tag elsewhere
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
			continue
		}
		rank := 0
		for _, key := range []string{annotationImageName, annotationRefName} {
			got, err := name.NewTag(d.Annotations[key], name.Insecure, name.StrictValidation)
			if err != nil {
				continue // absent, or only a tag (BuildKit's ref.name)
			}
			switch {
			case got.Name() == want.Name():
				rank = max(rank, 2)
			case got.RepositoryStr() == want.RepositoryStr() && got.TagStr() == want.TagStr():
				rank = max(rank, 1)
			}
		}
		if rank > 0 && rank >= best {
			desc, best = d, rank
		}
	}
	return desc, best > 0, nil
}

// pushLayout pushes the image named full from the OCI layout at dir (as
// `labreg build --no-push` wrote it) to full in the registry, with the
// docker CLI's credentials for that registry (plain HTTP when the registry
// does not speak TLS). It reports whether the layout had the image.
func (c *Client) pushLayout(ctx context.Context, dir, full string) (bool, error) {
	if dir == "" {
		dir = DefaultLayout
	}
	desc, ok, err := layoutMatch(dir, full)
	if err != nil || !ok {
		return false, err
	}
	ref, err := name.NewTag(full, name.Insecure)
	if err != nil {
		return false, fmt.Errorf("parsing image reference %q: %w", full, err)
	}
	cr, err := c.lookupCredentials(ref.RegistryStr())
	if err != nil {
		return false, err
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return false, fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	c.opts.OnProgress(Progress{Stage: StagePush, Image: full, Message: fmt.Sprintf("%s is not in the registry: pushing %s from OCI layout %s", full, desc.Digest, dir)})
	var t remote.Taggable // an image or an index: remote.Push takes either
	if desc.MediaType.IsIndex() {
		var root v1.ImageIndex
		if root, err = p.ImageIndex(); err == nil {
			t, err = root.ImageIndex(desc.Digest)
		}
	} else {
		t, err = p.Image(desc.Digest)
	}
	if err == nil {
		err = remote.Push(ref, t, remote.WithContext(ctx), remote.WithAuth(cr.authenticator()))
	}
	if err != nil {
		hint := ""
		if authHint(err, cr.host, true) != "" {
			hint = fmt.Sprintf(" (pushing uses this machine's docker login for %s: %s)", cr.host, cr)
		}
		return false, fmt.Errorf("pushing %s from OCI layout %s to %s: %w%s", desc.Digest, dir, full, err, hint)
	}
	return true, nil
}
