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
	"time"

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

//
// A referrer is recorded as pending (referrerPendingPath) before
// distribution stores it, and the record goes once it is indexed: when
// indexing fails after distribution stored the manifest (the push answers
// 500), the next referrers query of the repository or the next referrer
// pushed there indexes it (heal). The scan marker alone would hide it
// for good.

// referrerIndex is the subject -> referrer descriptors index in a
// storage driver.
type referrerIndex struct{ drv storagedriver.StorageDriver }

// pendingReferrer is a referrer pushed but maybe not indexed yet.
type pendingReferrer struct {
	Subject digest.Digest `json:"subject"`
	// Canonical is the sha256 distribution stores the manifest under.
	Canonical  digest.Digest      `json:"canonical"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
}

// pendingStale is the age past which a pending record whose manifest was
// never stored is dropped (a push that died with its server); younger
// ones may be pushes in flight.
const pendingStale = 10 * time.Minute

// intend records p before distribution stores its manifest.
func (x referrerIndex) intend(ctx context.Context, repo string, p pendingReferrer) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("recording referrer %s of %s: %w", p.Descriptor.Digest, p.Subject, err)
	}
	if err := x.drv.PutContent(ctx, referrerPendingPath(repo, p.Descriptor.Digest), b); err != nil {
		return fmt.Errorf("recording referrer %s of %s: %w", p.Descriptor.Digest, p.Subject, err)
	}
	return nil
}

// settle drops the pending record of referrer: it is indexed, deleted, or
// was never stored. A record left behind is healed again (add is
// idempotent).
func (x referrerIndex) settle(ctx context.Context, repo string, referrer digest.Digest) {
	_ = x.drv.Delete(ctx, referrerPendingPath(repo, referrer))
}

// stored reports whether repo has the manifest canonical.
func (x referrerIndex) stored(ctx context.Context, repo string, canonical digest.Digest) (bool, error) {
	_, err := x.drv.Stat(ctx, linkPath(repo, "manifests", canonical))
	if isPathNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// heal indexes the pending referrers of repo that are stored.
func (x referrerIndex) heal(ctx context.Context, repo string) error {
	paths, err := x.drv.List(ctx, referrersPendingPath(repo))
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("healing the referrer index of %s: %w", repo, err)
	}
	for _, p := range paths {
		b, err := x.drv.GetContent(ctx, p)
		if isPathNotFound(err) {
			continue // settled meanwhile
		}
		if err != nil {
			return fmt.Errorf("healing the referrer index of %s: %w", repo, err)
		}
		var pr pendingReferrer
		if json.Unmarshal(b, &pr) != nil || pr.Descriptor.Digest.Validate() != nil || pr.Canonical.Validate() != nil {
			_ = x.drv.Delete(ctx, p) // torn: its push failed before storing
			continue
		}
		ok, err := x.stored(ctx, repo, pr.Canonical)
		if err != nil {
			return fmt.Errorf("healing the referrer index of %s: %w", repo, err)
		}
		if !ok {
			if fi, err := x.drv.Stat(ctx, p); err == nil && time.Since(fi.ModTime()) > pendingStale {
				_ = x.drv.Delete(ctx, p)
			}
			continue // not stored (yet)
		}
		if err := x.add(ctx, repo, pr.Subject, pr.Descriptor); err != nil {
			return err
		}
		_ = x.drv.Delete(ctx, p)
	}
	return nil
}

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
	if err := x.drv.Delete(ctx, referrerPendingPath(repo, referrer)); err != nil && !isPathNotFound(err) {
		errs = append(errs, err)
	}
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
// pushed through labreg are indexed as they are pushed, or, when that
// failed, here by heal.
func (s *Server) scanReferrers(ctx context.Context, idx referrerIndex, repo string) error {
	drv := idx.drv
	marker := referrersScannedPath(repo)
	if _, err := drv.Stat(ctx, marker); err == nil {
		return idx.heal(ctx, repo)
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
	return idx.heal(ctx, repo)
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
