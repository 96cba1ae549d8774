package registry

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
)

// maxManifestSize is the largest manifest accepted, as in distribution.
const maxManifestSize = 4 << 20

var specsVersioned = specs.Versioned{SchemaVersion: 2}

// ociAPI is the layer between labreg's mux and distribution (plus the blob
// fast path) that adds what distribution 3.1.2 lacks: repository names and
// manifest sizes checked before anything runs, the referrers API and its
// index, OCI-Subject, and digests other than sha256 (see digest.go).
type ociAPI struct {
	s    *Server
	next http.Handler
	idx  referrerIndex
	// drv is the registry's storage driver (storage.go), used to keep
	// sha512 aliases (digest.go).
	drv storagedriver.StorageDriver
}

// ociAPI wraps next (distribution, or whatever serves /v2/ under us).
func (s *Server) ociAPI(next http.Handler) http.Handler {
	a := &ociAPI{s: s, next: next, idx: s.referrerIndex(), drv: s.store.driver}
	return a
}

// apiPath is a /v2/ request path split the way distribution routes it.
type apiPath struct {
	repo string
	kind string // manifests, blobs, uploads, tags, referrers
	ref  string // tag or digest; upload id; "" for tags
}

var apiRoutes = []struct {
	kind string
	re   *regexp.Regexp
}{
	{"manifests", regexp.MustCompile(`^/v2/(.+)/manifests/([^/]*)$`)},
	{"uploads", regexp.MustCompile(`^/v2/(.+)/blobs/uploads/([^/]*)$`)},
	{"blobs", regexp.MustCompile(`^/v2/(.+)/blobs/([^/]*)$`)},
	{"tags", regexp.MustCompile(`^/v2/(.+)/tags/list()$`)},
	{"referrers", regexp.MustCompile(`^/v2/(.+)/referrers/([^/]*)$`)},
}

func parseAPIPath(p string) (apiPath, bool) {
	for _, rt := range apiRoutes {
		if m := rt.re.FindStringSubmatch(p); m != nil {
			return apiPath{repo: m[1], kind: rt.kind, ref: m[2]}, true
		}
	}
	return apiPath{}, false
}

func (a *ociAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.s.opts.ReadOnly && isWrite(r.Method) && strings.HasPrefix(r.URL.Path, "/v2/") {
		refuseReadOnly(w) // requests.go
		return
	}
	p, ok := a.guard(w, r)
	if !ok || !a.checkRequest(w, r, p) { // manifest_guard.go, requests.go
		return
	}
	switch {
	case p.kind == "referrers":
		a.serveReferrers(w, r, p.repo, p.ref)
	case p.kind == "manifests" && r.Method == http.MethodPut:
		a.putManifest(w, r, p)
	case p.kind == "manifests" && r.Method == http.MethodDelete:
		a.deleteManifest(w, r, p)
	case p.kind == "manifests" || p.kind == "blobs" || p.kind == "uploads":
		a.digests(w, r, p)
	default:
		a.next.ServeHTTP(w, r)
	}
}

// putManifest forwards a manifest PUT to distribution with the body read
// (at most 4 MiB) and, once distribution has stored the manifest, indexes
// it as a referrer of its subject and answers with OCI-Subject.
func (a *ociAPI) putManifest(w http.ResponseWriter, r *http.Request, p apiPath) {
	if r.ContentLength > maxManifestSize {
		writeError(w, http.StatusRequestEntityTooLarge, errcode.ErrorCodeManifestInvalid,
			fmt.Sprintf("manifest of %d bytes is over the 4 MiB limit", r.ContentLength))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxManifestSize+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeManifestInvalid, "reading manifest: "+err.Error())
		return
	}
	if len(body) > maxManifestSize {
		writeError(w, http.StatusRequestEntityTooLarge, errcode.ErrorCodeManifestInvalid,
			"manifest is over the 4 MiB limit")
		return
	}
	// The digest the manifest is known by: the one in the URL when pushed
	// by digest (sha512 included), else the canonical sha256.
	dgst := digest.FromBytes(body)
	var alias *aliasPut
	if d, err := digest.Parse(p.ref); err == nil {
		dgst = d
		if d.Algorithm() != digest.Canonical {
			var ok bool
			if alias, ok = a.manifestAlias(w, r, p, d, body); !ok {
				return
			}
			r = alias.req
		}
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))

	desc, subject, isReferrer := referrerDescriptor(body, r.Header.Get("Content-Type"), dgst)
	u := manifestUpdate{repo: p.repo, named: dgst, canonical: digest.FromBytes(body)}
	if dgst.Algorithm() == digest.Canonical {
		u.canonical = dgst
	}
	if _, err := digest.Parse(p.ref); err != nil {
		u.tag = p.ref
	}
	if isReferrer {
		u.referrer, u.subject = &desc, subject
		// Recorded before distribution stores it: should indexing fail
		// after that, the record makes the index heal (referrers.go).
		err := a.idx.intend(r.Context(), p.repo, pendingReferrer{Subject: subject, Canonical: u.canonical, Descriptor: desc})
		if err != nil {
			a.s.log.Error("manifest PUT", "repo", p.repo, "ref", p.ref, "err", err)
			writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, err.Error())
			return
		}
	}
	hw := &hookWriter{ResponseWriter: w, onStatus: func(status int) (int, error) {
		if status != http.StatusCreated {
			if isReferrer {
				// Refused: nothing to index, unless it was stored before.
				if ok, err := a.idx.stored(r.Context(), p.repo, u.canonical); err == nil && !ok {
					a.idx.settle(r.Context(), p.repo, desc.Digest)
				}
			}
			return status, nil
		}
		if err := a.s.extras.changes.OnUpdateManifest(r.Context(), u); err != nil {
			return 0, err
		}
		if alias != nil {
			renameDigest(w.Header(), alias.canonical, alias.alias)
		}
		if isReferrer {
			w.Header().Set("OCI-Subject", subject.String())
		}
		return status, nil
	}}
	a.next.ServeHTTP(hw, r2)
	if hw.err != nil {
		a.s.log.Error("manifest PUT", "repo", p.repo, "ref", p.ref, "err", hw.err)
	}
}

// deleteManifest forwards a manifest DELETE and, when distribution has
// deleted a manifest by digest, removes it from the referrers index.
func (a *ociAPI) deleteManifest(w http.ResponseWriter, r *http.Request, p apiPath) {
	d, err := digest.Parse(p.ref)
	if err != nil { // a tag: the manifest stays
		a.untag(w, r, p)
		return
	}
	var alias *aliasDelete
	if d.Algorithm() != digest.Canonical {
		var ok bool
		if alias, ok = a.resolveAlias(w, r, p, d); !ok {
			return
		}
		r = alias.req
	}
	hw := &hookWriter{ResponseWriter: w, onStatus: func(status int) (int, error) {
		if status != http.StatusAccepted {
			return status, nil
		}
		canonical := d
		if alias != nil {
			canonical = alias.canonical
		}
		if err := a.s.extras.changes.OnDeleteManifest(r.Context(), p.repo, d, canonical, nil); err != nil {
			return 0, err
		}
		return status, nil
	}}
	a.next.ServeHTTP(hw, r)
	if hw.err != nil {
		a.s.log.Error("manifest DELETE", "repo", p.repo, "ref", p.ref, "err", hw.err)
	}
}

// untag forwards a DELETE of a tag and records it once distribution has
// removed the tag.
func (a *ociAPI) untag(w http.ResponseWriter, r *http.Request, p apiPath) {
	var d digest.Digest
	if named, err := reference.WithName(p.repo); err == nil {
		if repo, err := a.s.extras.catalog.ns.Repository(r.Context(), named); err == nil {
			if desc, err := repo.Tags(r.Context()).Get(r.Context(), p.ref); err == nil {
				d = desc.Digest
			}
		}
	}
	hw := &hookWriter{ResponseWriter: w, onStatus: func(status int) (int, error) {
		if status == http.StatusAccepted {
			a.s.extras.changes.OnUntag(r.Context(), p.repo, p.ref, d)
		}
		return status, nil
	}}
	a.next.ServeHTTP(hw, r)
}

// hookWriter calls onStatus before the status line goes out, so that the
// index is written before the client hears of success. When onStatus
// fails, the client gets a 500 with an OCI error body instead, and what the
// wrapped handler writes afterwards is dropped.
type hookWriter struct {
	http.ResponseWriter
	onStatus func(int) (int, error)
	wrote    bool
	failed   bool
	err      error
	// status is the status sent; errBody the start of an error body.
	status  int
	errBody []byte
}

func (h *hookWriter) WriteHeader(status int) {
	if h.wrote {
		return
	}
	h.wrote = true
	if status >= 200 && h.onStatus != nil {
		var err error
		if status, err = h.onStatus(status); err != nil {
			h.err, h.failed = err, true
			h.status = http.StatusInternalServerError
			writeError(h.ResponseWriter, http.StatusInternalServerError, errcode.ErrorCodeUnknown, err.Error())
			return
		}
	}
	h.status = status
	h.ResponseWriter.WriteHeader(status)
}

func (h *hookWriter) Write(b []byte) (int, error) {
	if !h.wrote {
		h.WriteHeader(http.StatusOK)
	}
	if h.failed {
		return len(b), nil
	}
	if h.status >= 400 && len(h.errBody) < 1024 {
		h.errBody = append(h.errBody, b[:min(len(b), 1024-len(h.errBody))]...)
	}
	return h.ResponseWriter.Write(b)
}

func (h *hookWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }
