package ui

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/registry"
)

// The JSON API serves the pages' data:
//
//	GET    /api/repositories?q=&sort=name|push&page=&per=&empty=1
//	GET    /api/repositories/<repo>/-/tags?q=&sort=name|created&page=&per=
//	GET    /api/repositories/<repo>/-/tags/<tag>
//	GET    /api/repositories/<repo>/-/manifests/<digest>
//	GET    /api/repositories/<repo>/-/pulls                (pulls per hour and day: all of the repository)
//	GET    /api/repositories/<repo>/-/pulls/<tag|digest>   (of one tag or digest)
//	DELETE /api/repositories/<repo>/-/tags/<tag>          (that tag only)
//	DELETE /api/repositories/<repo>/-/manifests/<digest>  (digest and its tags; ?in_use=confirm when a service uses it)
//	GET    /api/events?repo=&action=&page=&per=
//	GET    /api/status
//	POST   /api/gc  {"dry_run":true,"remove_untagged":false,"remove_empty_repos":false}
//	POST   /api/scrub {"repair":false}
//
// Errors are OCI-style: {"errors":[{"code":"NOT_FOUND","message":"..."}]}.
// Writes need no CSRF token: DELETE and a JSON POST cannot be sent
// cross-site without a CORS preflight, which this API never grants; and
// ServeHTTP refuses a foreign Host or Origin (DNS rebinding).
func (u *UI) routesAPI() {
	u.mux.HandleFunc("GET /api/repositories", u.apiRepos)
	u.mux.HandleFunc("GET /api/repositories/{rest...}", u.apiRepoGET)
	u.mux.HandleFunc("DELETE /api/repositories/{rest...}", u.apiRepoDELETE)
	u.mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, u.eventsView(r.URL.Query()))
	})
	u.mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, u.statusView(r.Context()))
	})
	u.mux.HandleFunc("POST /api/gc", u.apiGC)
	u.mux.HandleFunc("POST /api/scrub", u.apiScrub)
	u.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, fmt.Errorf("no API endpoint %s %s: %w", r.Method, r.URL.Path, registry.ErrNotFound))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// apiError answers with err's status and an OCI error body whose message
// is err's text, through the registry's one error renderer.
func apiError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	code := map[int]errcode.ErrorCode{
		http.StatusNotFound: registry.ErrorCodeNotFound, http.StatusBadRequest: registry.ErrorCodeBadRequest,
		http.StatusForbidden: errcode.ErrorCodeDenied, http.StatusServiceUnavailable: errcode.ErrorCodeUnavailable,
	}[status]
	if code == 0 {
		code = errcode.ErrorCodeUnknown
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", fmt.Sprint(int(registry.RetryAfter.Seconds())))
	}
	registry.WriteError(w, status, code.WithMessage(err.Error()))
}

func (u *UI) apiRepos(w http.ResponseWriter, r *http.Request) {
	p, err := u.repoPage(r.Context(), repoQuery(r.URL.Query()))
	if err != nil {
		apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (u *UI) apiRepoGET(w http.ResponseWriter, r *http.Request) {
	repo, verb, arg := splitRest(r.PathValue("rest"))
	ctx := r.Context()
	switch {
	case verb == "tags" && arg == "":
		p, err := u.tagPage(ctx, repo, tagQuery(r.URL.Query()))
		if err != nil {
			apiError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, p)
	case verb == "pulls":
		u.apiPulls(w, repo, arg)
	case (verb == "tags" || verb == "manifests") && arg != "":
		d, err := u.opts.Catalog.Resolve(ctx, repo, arg)
		if err != nil {
			apiError(w, err)
			return
		}
		v, err := u.imageView(r, repo, d, strings.TrimSuffix(verb, "s"), arg)
		if err != nil {
			apiError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	default:
		apiError(w, fmt.Errorf("no API endpoint %s: %w", r.URL.Path, registry.ErrNotFound))
	}
}

func (u *UI) apiRepoDELETE(w http.ResponseWriter, r *http.Request) {
	if u.opts.ReadOnly {
		apiError(w, fmt.Errorf("the UI is read-only (--ui-readonly): %w", errForbidden))
		return
	}
	repo, verb, arg := splitRest(r.PathValue("rest"))
	// The registry records the deletes in its history (one place where a
	// manifest changes), with this actor.
	ctx := registry.WithActor(r.Context(), registry.Actor{User: user(r), Addr: r.RemoteAddr, Via: "api"})
	switch {
	case verb == "tags" && arg != "":
		d, err := u.opts.Catalog.DeleteTag(ctx, repo, arg)
		if err != nil {
			apiError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"deleted_tags": []string{arg}, "digest": d})
	case verb == "manifests" && arg != "":
		d, err := digest.Parse(arg)
		if err != nil {
			apiError(w, fmt.Errorf("digest %q: %v: %w", arg, err, errBadRequest))
			return
		}
		if err := u.checkDeleteInUse(r, repo, d); err != nil {
			apiError(w, err)
			return
		}
		tags, err := u.opts.Catalog.DeleteManifest(ctx, repo, d)
		if err != nil {
			apiError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"deleted_tags": tags, "digest": d})
	default:
		apiError(w, fmt.Errorf("no API endpoint %s: %w", r.URL.Path, registry.ErrNotFound))
	}
}

// GCRequest is the body of POST /api/gc.
type GCRequest struct {
	DryRun           bool `json:"dry_run"`
	RemoveUntagged   bool `json:"remove_untagged"`
	RemoveEmptyRepos bool `json:"remove_empty_repos"`
	// IgnoreSwarm removes untagged manifests even when the swarm cannot
	// be asked which ones services use.
	IgnoreSwarm bool `json:"ignore_swarm,omitempty"`
}

func (u *UI) apiGC(w http.ResponseWriter, r *http.Request) {
	if u.opts.GC == nil || u.opts.ReadOnly {
		apiError(w, fmt.Errorf("garbage collection is not available in a read-only UI: %w", errForbidden))
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		apiError(w, fmt.Errorf("POST /api/gc needs Content-Type: application/json: %w", errBadRequest))
		return
	}
	var req GCRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		apiError(w, fmt.Errorf("decoding GC request: %v: %w", err, errBadRequest))
		return
	}
	opts := registry.GCOptions{DryRun: req.DryRun, RemoveUntagged: req.RemoveUntagged, RemoveEmptyRepos: req.RemoveEmptyRepos}
	unchecked, err := u.gcKeep(r.Context(), &opts, req.IgnoreSwarm)
	if err != nil {
		apiError(w, err)
		return
	}
	res, err := u.opts.GC.GC(r.Context(), opts)
	if err != nil {
		apiError(w, err)
		return
	}
	res.Unchecked = unchecked
	writeJSON(w, http.StatusOK, res)
}

func (u *UI) apiScrub(w http.ResponseWriter, r *http.Request) {
	if u.opts.Scrub == nil {
		apiError(w, fmt.Errorf("scrub is not available: %w", errForbidden))
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		apiError(w, fmt.Errorf("POST /api/scrub needs Content-Type: application/json: %w", errBadRequest))
		return
	}
	var req registry.ScrubOptions
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		apiError(w, fmt.Errorf("decoding scrub request: %v: %w", err, errBadRequest))
		return
	}
	if req.Repair && u.opts.ReadOnly {
		apiError(w, fmt.Errorf("scrub repair is not available in a read-only UI: %w", errForbidden))
		return
	}
	rep, err := u.opts.Scrub.Scrub(r.Context(), req)
	if err != nil {
		apiError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
