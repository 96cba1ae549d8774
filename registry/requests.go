package registry

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Checks of the parts of a /v2/ request that distribution answers badly:
// a malformed tag or digest (404 text/plain from its router), a malformed
// Content-Range (500), Range specs net/http serves wrongly or expensively,
// and writes to a --readonly registry (405 text/plain, after resuming the
// upload and rewriting its hash state). Each is answered here, before
// distribution sees the request, with a 4xx and an OCI error body.

// maxRanges is the most byte ranges of a blob served as one multipart
// reply; a Range header with more is ignored and the whole blob is sent
// (RFC 9110 14.2 lets a server ignore Range), which costs no more than the
// blob itself.
const maxRanges = 16

var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// checkRequest answers a /v2/ API request whose reference, Content-Range
// or Range is malformed and returns false; it may rewrite r's Range header
// (see limitRanges).
func (a *ociAPI) checkRequest(w http.ResponseWriter, r *http.Request, p apiPath) bool {
	if allow := allowedMethods(p); !strings.Contains(","+allow+",", ","+r.Method+",") {
		w.Header().Set("Allow", strings.ReplaceAll(allow, ",", ", "))
		WriteError(w, http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported.
			WithMessage(r.Method+" is not supported on "+p.kind+" (allowed: "+allow+")"))
		return false
	}
	switch p.kind {
	case "manifests":
		if err := checkReference(p.ref); err != nil {
			WriteError(w, 0, *err)
			return false
		}
	case "blobs":
		if p.ref == "uploads" { // POST …/blobs/uploads: distribution redirects to the slash form
			return true
		}
		if _, err := digest.Parse(p.ref); err != nil {
			writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid, "blob digest: "+err.Error())
			return false
		}
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && !limitRanges(r.Header) {
			writeError(w, http.StatusRequestedRangeNotSatisfiable, errcode.ErrorCodeRangeInvalid,
				"Range "+strconv.Quote(r.Header.Get("Range"))+" selects no bytes")
			return false
		}
	case "uploads":
		// distribution answers 500 to a chunk of another type.
		if ct := r.Header.Get("Content-Type"); r.Method == http.MethodPatch && ct != "" && ct != "application/octet-stream" {
			WriteError(w, http.StatusUnsupportedMediaType, errcode.ErrorCodeUnsupported.
				WithMessage("an upload chunk is application/octet-stream, not "+strconv.Quote(ct)))
			return false
		}
		if cr := r.Header.Get("Content-Range"); cr != "" && (r.Method == http.MethodPatch || r.Method == http.MethodPut) {
			if _, _, ok := parseContentRange(cr); !ok {
				writeError(w, http.StatusRequestedRangeNotSatisfiable, errcode.ErrorCodeRangeInvalid,
					"Content-Range "+strconv.Quote(cr)+" is not START-END (bytes, inclusive)")
				return false
			}
		}
	}
	return true
}

// allowedMethods are the methods the distribution API routes for p's kind
// (distribution answers others with 405 text/plain).
func allowedMethods(p apiPath) string {
	switch p.kind {
	case "manifests":
		return "GET,HEAD,PUT,DELETE"
	case "blobs":
		if p.ref == "uploads" {
			return "GET,HEAD,POST,PATCH,PUT,DELETE" // distribution redirects to …/uploads/
		}
		return "GET,HEAD,DELETE"
	case "uploads":
		if p.ref == "" {
			return "POST"
		}
		return "GET,HEAD,PATCH,PUT,DELETE"
	case "referrers":
		return "GET"
	}
	return "GET,HEAD" // tags/list
}

// checkReference checks a manifest reference: a tag ([A-Za-z0-9_]
// then up to 127 of [A-Za-z0-9_.-]) or a digest of an available algorithm.
func checkReference(ref string) *errcode.Error {
	if anchoredTag.MatchString(ref) {
		return nil
	}
	if strings.Contains(ref, ":") {
		if _, err := digest.Parse(ref); err != nil {
			e := errcode.ErrorCodeDigestInvalid.WithDetail("manifest digest: " + err.Error())
			return &e
		}
		return nil
	}
	e := errcode.ErrorCodeTagInvalid.WithDetail("tag " + strconv.Quote(short(ref, 140)) +
		": a tag is 1 to 128 characters of letters, digits, _, . and -, not starting with . or -")
	return &e
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// parseContentRange parses the Content-Range of an upload chunk as
// distribution's API defines it: "START-END", inclusive byte offsets.
func parseContentRange(s string) (start, end int64, ok bool) {
	a, b, found := strings.Cut(s, "-")
	if !found || !digitsOnly(a) || !digitsOnly(b) {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return start, end, true
}

func digitsOnly(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// limitRanges prepares a blob request's Range header for net/http's
// ServeContent, which serves "bytes=-0" (the last zero bytes, which RFC
// 9110 calls unsatisfiable) as a 206 with an inverted Content-Range, and
// turns many tiny ranges into a multipart reply many times the blob's
// size. It drops zero-length suffix ranges, and the whole header when it
// holds more than maxRanges ranges; it reports false when every range was
// a zero-length suffix (the request is unsatisfiable). Headers it cannot
// parse are left to ServeContent.
func limitRanges(h http.Header) bool {
	v := h.Get("Range")
	spec, ok := strings.CutPrefix(v, "bytes=")
	if v == "" || !ok {
		return true
	}
	parts := strings.Split(spec, ",")
	if len(parts) > maxRanges {
		h.Del("Range")
		return true
	}
	keep := parts[:0]
	for _, p := range parts {
		// As net/http parses a range: trimmed, cut at "-", both ends
		// trimmed, numbers as strconv.ParseInt reads them ("+0" too).
		p = strings.TrimSpace(p)
		start, end, _ := strings.Cut(p, "-")
		if strings.TrimSpace(start) == "" {
			if n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64); err == nil && n == 0 {
				continue // "-0": the last zero bytes
			}
		}
		keep = append(keep, p)
	}
	if len(keep) == 0 {
		return false
	}
	if len(keep) < len(parts) {
		h.Set("Range", "bytes="+strings.Join(keep, ","))
	}
	return true
}

// refuseReadOnly answers a write to a --readonly registry with 405 and an
// OCI error body, before distribution resumes (and rewrites) an upload.
func refuseReadOnly(w http.ResponseWriter) {
	w.Header().Set("Allow", "GET, HEAD")
	WriteError(w, http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported.
		WithMessage("the registry is read-only (--readonly): no push or delete"))
}
