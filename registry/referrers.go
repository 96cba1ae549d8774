package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The OCI 1.1 referrers API, which distribution 3.1.2 lacks.
//
// Every manifest pushed with a `subject` leaves one small JSON object in
// the storage, its descriptor as the referrers API returns it (at
// referrerEntryPath, layout.go), written when distribution has accepted
// the manifest (before the 201 reaches the client) and removed when the
// manifest is deleted by digest. The index lives in the storage driver,
// so every replica on a shared store reads the same one.

// referrerIndex is the subject -> referrer descriptors index in a
// storage driver.
type referrerIndex struct{ drv storagedriver.StorageDriver }

// add records desc as a referrer of subject in repo.
func (x referrerIndex) add(ctx context.Context, repo string, subject digest.Digest, desc ocispec.Descriptor) error {
	b, err := json.Marshal(desc)
	if err != nil {
		return fmt.Errorf("indexing referrer %s of %s: %w", desc.Digest, subject, err)
	}
	// The subject first: remove finds the entry through it.
	if err := x.drv.PutContent(ctx, referrerSubjectPath(repo, desc.Digest), []byte(subject)); err != nil {
		return fmt.Errorf("indexing referrer %s of %s: %w", desc.Digest, subject, err)
	}
	if err := x.drv.PutContent(ctx, referrerEntryPath(repo, subject, desc.Digest), b); err != nil {
		return fmt.Errorf("indexing referrer %s of %s: %w", desc.Digest, subject, err)
	}
	return nil
}

// remove drops referrer from its subject's list in repo. The subject is
// read from the index, not from the (possibly already deleted) manifest.
func (x referrerIndex) remove(ctx context.Context, repo string, referrer digest.Digest) error {
	b, err := x.drv.GetContent(ctx, referrerSubjectPath(repo, referrer))
	if isPathNotFound(err) {
		return nil // not a referrer
	}
	if err != nil {
		return fmt.Errorf("unindexing referrer %s: %w", referrer, err)
	}
	var errs []error
	if subject, err := digest.Parse(strings.TrimSpace(string(b))); err == nil {
		if err := x.drv.Delete(ctx, referrerEntryPath(repo, subject, referrer)); err != nil && !isPathNotFound(err) {
			errs = append(errs, err)
		}
	}
	if err := x.drv.Delete(ctx, referrerSubjectPath(repo, referrer)); err != nil && !isPathNotFound(err) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unindexing referrer %s: %w", referrer, err)
	}
	return nil
}

// list returns the referrers of subject in repo, sorted by digest, as
// recorded; Server.Referrers checks them against storage.
func (x referrerIndex) list(ctx context.Context, repo string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	ents, err := x.drv.List(ctx, referrersSubjectPath(repo, subject))
	if isPathNotFound(err) {
		return []ocispec.Descriptor{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing referrers of %s: %w", subject, err)
	}
	out := make([]ocispec.Descriptor, 0, len(ents))
	for _, e := range ents {
		if !strings.HasSuffix(e, ".json") {
			continue
		}
		b, err := x.drv.GetContent(ctx, e)
		if isPathNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("listing referrers of %s: %w", subject, err)
		}
		var d ocispec.Descriptor
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, fmt.Errorf("listing referrers of %s: %s: %w", subject, path.Base(e), err)
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b ocispec.Descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return out, nil
}

func (s *Server) referrerIndex() referrerIndex {
	return referrerIndex{drv: s.store.driver}
}

// Referrers returns the descriptors of the manifests in repo whose subject
// is subject, as the OCI referrers API lists them (artifactType falls back
// to the config media type). A non-empty artifactType keeps only the
// descriptors with that artifact type. No referrers is an empty slice.
func (s *Server) Referrers(ctx context.Context, repo string, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := reference.WithName(repo); err != nil {
		return nil, fmt.Errorf("listing referrers: repository %q: %w", repo, err)
	}
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("listing referrers: subject %q: %w", subject, err)
	}
	idx := s.referrerIndex()
	if err := s.scanReferrers(ctx, idx, repo); err != nil {
		return nil, err
	}
	all, err := idx.list(ctx, repo, subject)
	if err != nil {
		return nil, err
	}
	// Drop what is no longer in the repository: a manifest removed
	// behind the index's back (garbage collection, a crash between the
	// delete and the index update).
	return slices.DeleteFunc(all, func(d ocispec.Descriptor) bool {
		if artifactType != "" && d.ArtifactType != artifactType {
			return true
		}
		_, err := idx.drv.Stat(ctx, linkPath(repo, "manifests", d.Digest))
		return isPathNotFound(err)
	}), nil
}

// scanReferrers indexes the manifests of repo that have a subject, once
// per repository (then referrersScannedPath exists): for data written by
// distribution without labreg, or an index that was removed. Manifests
// pushed through labreg are indexed as they are pushed.
func (s *Server) scanReferrers(ctx context.Context, idx referrerIndex, repo string) error {
	drv := idx.drv
	marker := referrersScannedPath(repo)
	if _, err := drv.Stat(ctx, marker); err == nil {
		return nil
	}
	algs, err := drv.List(ctx, linkDir(repo, "manifests"))
	if isPathNotFound(err) {
		return nil // no such repository (yet): nothing to scan, nothing to write
	}
	if err != nil {
		return fmt.Errorf("scanning %s for referrers: %w", repo, err)
	}
	// A manifest pushed by sha512 has two revisions: the sha512 alias
	// (listed under the digest it was pushed by) and its sha256.
	var found []digest.Digest
	aliased := map[digest.Digest]bool{}
	for _, alg := range algs {
		hexes, err := drv.List(ctx, alg)
		if isPathNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("scanning %s for referrers: %w", repo, err)
		}
		for _, hx := range hexes {
			d := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(alg)), path.Base(hx))
			if d.Validate() != nil {
				continue
			}
			found = append(found, d)
			if d.Algorithm() != digest.Canonical {
				if c, err := readLink(ctx, drv, repo, "manifests", d); err == nil {
					aliased[c] = true
				}
			}
		}
	}
	for _, d := range found {
		if err := ctx.Err(); err != nil {
			return err
		}
		if aliased[d] {
			continue
		}
		body, err := manifestContent(ctx, drv, repo, d)
		if err != nil {
			continue // deleted meanwhile, or not a manifest we can read
		}
		if desc, subject, ok := referrerDescriptor(body, "", d); ok {
			if err := idx.add(ctx, repo, subject, desc); err != nil {
				return err
			}
		}
	}
	if err := drv.PutContent(ctx, marker, nil); err != nil {
		return fmt.Errorf("scanning %s for referrers: %w", repo, err)
	}
	return nil
}

// manifestContent reads the manifest d of repo through its revision link.
func manifestContent(ctx context.Context, drv storagedriver.StorageDriver, repo string, d digest.Digest) ([]byte, error) {
	c, err := readLink(ctx, drv, repo, "manifests", d)
	if err != nil {
		return nil, err
	}
	if c.Validate() != nil {
		return nil, fmt.Errorf("manifest %s: bad link %s", d, c)
	}
	rc, err := drv.Reader(ctx, blobDataPath(c), 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if c.Algorithm().FromBytes(b) != c {
		return nil, fmt.Errorf("manifest %s: content does not match", c)
	}
	return b, nil
}

// serveReferrers answers GET /v2/<repo>/referrers/<digest>[?artifactType=].
// It never answers 404: a subject without referrers has an empty index.
func (a *ociAPI) serveReferrers(w http.ResponseWriter, r *http.Request, repo, ref string) {
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(w, http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported, "referrers: only GET")
		return
	}
	subject, err := digest.Parse(ref)
	if err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid, err.Error())
		return
	}
	at := r.URL.Query().Get("artifactType")
	descs, err := a.s.Referrers(r.Context(), repo, subject, at)
	if err != nil {
		a.s.log.Error("referrers", "repo", repo, "subject", subject, "err", err)
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, err.Error())
		return
	}
	body, err := json.Marshal(ocispec.Index{
		Versioned: specsVersioned,
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: descs,
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, err.Error())
		return
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// manifestFields are the parts of an image manifest or index that the
// referrers API needs.
type manifestFields struct {
	MediaType    string              `json:"mediaType"`
	ArtifactType string              `json:"artifactType"`
	Config       *ocispec.Descriptor `json:"config"`
	Subject      *ocispec.Descriptor `json:"subject"`
	Annotations  map[string]string   `json:"annotations"`
}

// referrerDescriptor is the descriptor of a manifest (body, pushed with
// Content-Type contentType, known by dgst) in a referrers list, and its
// subject. ok is false when the manifest has no subject.
func referrerDescriptor(body []byte, contentType string, dgst digest.Digest) (desc ocispec.Descriptor, subject digest.Digest, ok bool) {
	var m manifestFields
	if json.Unmarshal(body, &m) != nil || m.Subject == nil || m.Subject.Digest.Validate() != nil {
		return ocispec.Descriptor{}, "", false
	}
	mt := m.MediaType
	if mt == "" {
		mt = contentType
	}
	at := m.ArtifactType
	if at == "" && m.Config != nil && mt != ocispec.MediaTypeImageIndex {
		at = m.Config.MediaType
	}
	return ocispec.Descriptor{
		MediaType:    mt,
		ArtifactType: at,
		Digest:       dgst,
		Size:         int64(len(body)),
		Annotations:  m.Annotations,
	}, m.Subject.Digest, true
}
