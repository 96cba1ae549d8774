package registry

import (
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
)

// guard rejects /v2/ requests whose repository name is invalid (upper
// case, over 255 characters, "." or ".." segments however encoded, empty
// segments) with 400 NAME_INVALID before anything can touch storage or
// redirect the client to a cleaned path. It passes requests outside /v2/
// and /v2/ paths that name no repository (/v2/, /v2/_catalog) straight on
// and returns false for them and for the requests it answered.
func (a *ociAPI) guard(w http.ResponseWriter, r *http.Request) (apiPath, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		a.next.ServeHTTP(w, r)
		return apiPath{}, false
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest != "" {
		for seg := range strings.SplitSeq(rest, "/") {
			if seg == "" || seg == "." || seg == ".." {
				writeError(w, http.StatusBadRequest, errcode.ErrorCodeNameInvalid,
					"path segment "+quoteSeg(seg)+" in "+r.URL.Path)
				return apiPath{}, false
			}
		}
	}
	p, ok := parseAPIPath(r.URL.Path)
	if !ok {
		if rest == "" || rest == "_catalog" {
			a.next.ServeHTTP(w, r)
		} else { // distribution's router would answer 404 text/plain
			writeError(w, http.StatusNotFound, ErrorCodeNotFound, "no registry API endpoint "+r.URL.Path)
		}
		return apiPath{}, false
	}
	if _, err := reference.WithName(p.repo); err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeNameInvalid, err.Error())
		return apiPath{}, false
	}
	return p, true
}

func quoteSeg(s string) string { return `"` + s + `"` }
