package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Digests other than sha256 (sha512, sha384).
//
// distribution 3.1.2 keeps every blob under its sha256. When an upload is
// committed with another digest it verifies that digest and links it to
// the sha256 one (repositories/<repo>/_layers/sha512/<hex>/link holds
// "sha256:…"), but it then answers with the sha256 digest in
// Docker-Content-Digest and Location, mounts such a blob into a dangling
// link, and refuses a manifest pushed by a sha512 digest.
//
// So here a request naming a non-canonical digest is resolved through
// those alias links and passed on with the sha256 digest, the response
// headers are rewritten to the digest the client used, and the alias links
// distribution does not write (mounted blobs, manifests, whose alias sits
// at _manifests/revisions/sha512/<hex>/link) are written through its
// storage driver, in its own layout. Deleting by either digest removes the
// content's links under both.

// readAlias returns the digest the link of d in repo points to.
func (a *ociAPI) readAlias(ctx context.Context, repo, kind string, d digest.Digest) (digest.Digest, error) {
	return readLink(ctx, a.drv, repo, kind, d)
}

func readLink(ctx context.Context, drv storagedriver.StorageDriver, repo, kind string, d digest.Digest) (digest.Digest, error) {
	b, err := drv.GetContent(ctx, linkPath(repo, kind, d))
	if err != nil {
		return "", err
	}
	c, err := digest.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("link of %s in %s: %w", d, repo, err)
	}
	return c, nil
}

// dropAliases deletes the non-canonical links of repo that point to
// canonical.
func dropAliases(ctx context.Context, drv storagedriver.StorageDriver, repo, kind string, canonical digest.Digest) error {
	var nf storagedriver.PathNotFoundError
	algs, err := drv.List(ctx, linkDir(repo, kind))
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s links of %s: %w", kind, repo, err)
	}
	var errs []error
	for _, algDir := range algs {
		alg := digest.Algorithm(path.Base(algDir))
		if alg == digest.Canonical || !alg.Available() {
			continue
		}
		dirs, err := drv.List(ctx, algDir)
		if err != nil && !errors.As(err, &nf) {
			errs = append(errs, err)
			continue
		}
		for _, dir := range dirs {
			d := digest.NewDigestFromEncoded(alg, path.Base(dir))
			if d.Validate() != nil {
				continue
			}
			if c, err := readLink(ctx, drv, repo, kind, d); err == nil && c == canonical {
				if err := drv.Delete(ctx, dir); err != nil && !errors.As(err, &nf) {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting %s aliases of %s in %s: %w", kind, canonical, repo, err)
	}
	return nil
}

// withRef returns r addressed to ref instead of p.ref.
func withRef(r *http.Request, p apiPath, ref string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimSuffix(r.URL.Path, p.ref) + ref
	r2.URL.RawPath = ""
	return r2
}

// aliasPut is a manifest PUT by a non-canonical digest, readdressed to the
// manifest's sha256.
type aliasPut struct {
	req              *http.Request
	repo             string
	alias, canonical digest.Digest
}

// manifestAlias checks that body has digest d and readdresses the PUT to
// its sha256. It answers the client itself when it returns false.
func (a *ociAPI) manifestAlias(w http.ResponseWriter, r *http.Request, p apiPath, d digest.Digest, body []byte) (*aliasPut, bool) {
	if d.Algorithm().FromBytes(body) != d {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid,
			fmt.Sprintf("manifest content does not match %s", d))
		return nil, false
	}
	c := digest.FromBytes(body)
	return &aliasPut{req: withRef(r, p, c.String()), repo: p.repo, alias: d, canonical: c}, true
}

// renameDigest rewrites the digest headers of a response from canonical to
// alias.
func renameDigest(h http.Header, canonical, alias digest.Digest) {
	h.Set("Docker-Content-Digest", alias.String())
	if loc := h.Get("Location"); loc != "" {
		h.Set("Location", strings.Replace(loc, canonical.String(), alias.String(), 1))
	}
	if h.Get("Etag") != "" {
		h.Set("Etag", `"`+alias.String()+`"`)
	}
}

// aliasDelete is a DELETE by a non-canonical digest, readdressed.
type aliasDelete struct {
	req       *http.Request
	canonical digest.Digest
}

// resolveAlias readdresses a request for d to the digest d links to, or
// answers 404 itself and returns false.
func (a *ociAPI) resolveAlias(w http.ResponseWriter, r *http.Request, p apiPath, d digest.Digest) (*aliasDelete, bool) {
	c, err := a.readAlias(r.Context(), p.repo, p.kind, d)
	var nf storagedriver.PathNotFoundError
	switch {
	case errors.As(err, &nf) && p.kind == "manifests":
		writeError(w, http.StatusNotFound, errcode.ErrorCodeManifestUnknown, d.String())
		return nil, false
	case errors.As(err, &nf):
		writeError(w, http.StatusNotFound, errcode.ErrorCodeBlobUnknown, d.String())
		return nil, false
	case err != nil:
		a.s.log.Error("resolving digest", "repo", p.repo, "digest", d, "err", err)
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, err.Error())
		return nil, false
	}
	return &aliasDelete{req: withRef(r, p, c.String()), canonical: c}, true
}

// digests serves manifest GET/HEAD and blob GET/HEAD/DELETE and uploads,
// handling non-canonical digests; everything else goes straight on.
func (a *ociAPI) digests(w http.ResponseWriter, r *http.Request, p apiPath) {
	if p.kind == "uploads" {
		a.upload(w, r, p)
		return
	}
	d, err := digest.Parse(p.ref)
	if err != nil {
		a.next.ServeHTTP(w, r)
		return
	}
	canonical := d
	if d.Algorithm() != digest.Canonical {
		al, ok := a.resolveAlias(w, r, p, d)
		if !ok {
			return
		}
		r, canonical = al.req, al.canonical
	}
	isDelete := r.Method == http.MethodDelete && p.kind == "blobs"
	if !isDelete && d == canonical {
		a.next.ServeHTTP(w, r)
		return
	}
	hw := &hookWriter{ResponseWriter: w, onStatus: func(status int) (int, error) {
		if status >= 300 {
			return status, nil
		}
		if isDelete {
			// distribution cleared its cache before the delete; a request
			// may have cached the blob in repo again meanwhile.
			return status, errors.Join(dropAliases(r.Context(), a.drv, p.repo, "blobs", canonical),
				a.s.descriptors.dropAgain(r.Context(), unlinked(p.repo, d, canonical)))
		}
		renameDigest(w.Header(), canonical, d)
		return status, nil
	}}
	a.next.ServeHTTP(hw, r)
	if hw.err != nil {
		a.s.log.Error("blob DELETE", "repo", p.repo, "ref", p.ref, "err", hw.err)
	}
}

// upload handles uploads completed (PUT ?digest=) or mounted (POST
// ?mount=&from=) with a non-canonical digest.
func (a *ociAPI) upload(w http.ResponseWriter, r *http.Request, p apiPath) {
	q := r.URL.Query()
	var alias digest.Digest
	var link bool // the alias link is ours to write (mount)
	switch r.Method {
	case http.MethodPut:
		// A missing or malformed digest is distribution's to refuse (400
		// DIGEST_INVALID); only a valid one can be an alias.
		if d, err := digest.Parse(q.Get("digest")); err == nil {
			alias = d
		}
	case http.MethodPost:
		m, err := digest.Parse(q.Get("mount"))
		if err != nil || m.Algorithm() == digest.Canonical {
			break
		}
		from := q.Get("from")
		if _, err := reference.WithName(from); err != nil {
			break
		}
		c, err := a.readAlias(r.Context(), from, "blobs", m)
		if err != nil {
			break // not mountable: distribution starts an upload instead
		}
		alias, link = m, true
		q.Set("mount", c.String())
		r = r.Clone(r.Context())
		r.URL.RawQuery = q.Encode()
	}
	if r.Method != http.MethodPut && (alias == "" || alias.Algorithm() == digest.Canonical) {
		a.next.ServeHTTP(w, r)
		return
	}
	if alias != "" && alias.Algorithm() == digest.Canonical {
		alias = ""
	}
	hw := &hookWriter{ResponseWriter: w, onStatus: func(status int) (int, error) {
		if status != http.StatusCreated || alias == "" {
			return status, nil
		}
		canonical, err := digest.Parse(w.Header().Get("Docker-Content-Digest"))
		if err != nil {
			return status, nil
		}
		if link {
			if err := a.drv.PutContent(r.Context(), linkPath(p.repo, "blobs", alias), []byte(canonical)); err != nil {
				return 0, fmt.Errorf("linking mounted blob %s to %s: %w", alias, canonical, err)
			}
		}
		renameDigest(w.Header(), canonical, alias)
		return status, nil
	}}
	a.next.ServeHTTP(hw, r)
	if hw.err != nil {
		a.s.log.Error("blob upload", "repo", p.repo, "digest", alias, "err", hw.err)
	}
	if r.Method == http.MethodPut && hw.status == http.StatusBadRequest &&
		bytes.Contains(hw.errBody, []byte(`"DIGEST_INVALID"`)) {
		if err := a.dropUpload(r.Context(), p.repo, p.ref); err != nil {
			a.s.log.Warn("removing failed upload", "repo", p.repo, "upload", p.ref, "err", err)
		}
	}
}

// dropUpload removes an upload whose completion failed its digest check
// (distribution means to but does not: "error canceling upload after
// error: already closed"). On a filesystem store it also removes the
// directories that leaves empty, up to the repository: a push with a wrong
// digest leaves nothing behind. rmdir only removes empty directories, so
// concurrent uploads to the repository keep theirs. (An object store has
// no directories to leave.)
func (a *ociAPI) dropUpload(ctx context.Context, repo, id string) error {
	if id == "" || strings.ContainsAny(id, `/\`) || id == "." || id == ".." {
		return nil
	}
	if err := a.drv.Delete(ctx, uploadPath(repo, id)); err != nil && !isPathNotFound(err) {
		return err
	}
	root, ok := a.s.store.fsRoot()
	if !ok {
		return nil
	}
	top := fsPath(root, reposPath())
	for d := filepath.Dir(fsPath(root, uploadPath(repo, id))); strings.HasPrefix(d, top+string(filepath.Separator)); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break // not empty: in use
		}
	}
	return nil
}
