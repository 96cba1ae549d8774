package registry

import (
	"net/http"
	"os"
	"regexp"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// The fast paths serve the hot, simple cases of the blob API straight from
// the filesystem driver's tree, laid out exactly as distribution lays it out
// (see distribution's registry/storage/paths.go):
//
//	<root>/docker/registry/v2/blobs/sha256/<hh>/<hex>/data
//	<root>/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link
//	<root>/docker/registry/v2/repositories/<name>/_uploads/<id>/{data,startedat,hashstates/sha256/<offset>}
//
// Blob GET/HEAD (fastpath.go) and the data-carrying upload requests PATCH
// and PUT (upload.go) are handled here. Anything unusual — another storage
// driver, an upload to a mirror, a missing link, a non-sha256 digest, a
// malformed header, a failed auth check — falls through, untouched, to
// distribution, which then answers exactly as it always does. Credentials were checked
// before any of this runs (Server.authenticate).

var (
	fastBlobPath   = regexp.MustCompile(`^/v2/(` + reference.NameRegexp.String() + `)/blobs/(sha256:[a-f0-9]{64})$`)
	fastUploadPath = regexp.MustCompile(`^/v2/(` + reference.NameRegexp.String() + `)/blobs/uploads/([a-zA-Z0-9-_.=]+)$`)
)

// maxNameLength is the longest repository name distribution accepts
// (reference.NameTotalLengthMax, deprecated in distribution/reference
// without a replacement: the limit is the registry's, not the package's).
const maxNameLength = 255

// fastPath is the handler in front of distribution's app.
type fastPath struct {
	next     http.Handler
	root     string // the filesystem driver's root directory (see fsPath)
	secret   string // distribution's http.secret: signs upload state
	headers  http.Header
	readOnly bool       // no upload paths: read-only, or a mirror
	budget   *memBudget // Options.UploadMemory
	// blobs and uploads count the requests served here (the rest go to
	// distribution): labreg_fastpath_requests_total{kind="blob|upload"}.
	blobs, uploads prometheus.Counter
}

// fastPaths wraps distribution's app with the blob fast paths. They are
// off (next is returned as is) unless storage is the filesystem driver. A
// mirror (pull-through cache) gets the blob GET/HEAD path only: a blob it
// has cached is linked in the repository as a pushed one is, and is
// served from its file as distribution's proxy would serve it from
// storage (same headers); one not cached yet goes on to the mirror
// (proxy.go). Its uploads are distribution's to refuse.
func (s *Server) fastPaths(next http.Handler) (http.Handler, error) {
	cfg := s.app.Config
	if cfg == nil || cfg.Storage.Type() != "filesystem" {
		return next, nil
	}
	mirror := cfg.Proxy.RemoteURL != ""
	root, _ := cfg.Storage.Parameters()["rootdirectory"].(string)
	if root == "" {
		return next, nil
	}
	served, err := register(s.metrics, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "labreg_fastpath_requests_total",
		Help: "Blob requests served by the fast paths (the rest go to distribution), by kind: blob, upload.",
	}, []string{"kind"}))
	if err != nil {
		return nil, err
	}
	return &fastPath{
		next:     next,
		root:     root,
		secret:   cfg.HTTP.Secret,
		headers:  cfg.HTTP.Headers,
		readOnly: s.opts.ReadOnly || mirror,
		budget:   newMemBudget(s.opts.UploadMemory),
		blobs:    served.WithLabelValues("blob"),
		uploads:  served.WithLabelValues("upload"),
	}, nil
}

func (fp *fastPath) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if fp.serve(w, r) {
		return
	}
	fp.next.ServeHTTP(w, r)
}

// serve handles r and reports true, or reports false having written
// nothing and read nothing of the body.
func (fp *fastPath) serve(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.RawPath != "" { // escaped path: let distribution's router decide
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		m := fastBlobPath.FindStringSubmatch(r.URL.Path)
		if m == nil || len(m[1]) > maxNameLength {
			return false
		}
		return fp.serveBlob(w, r, m[1], m[len(m)-1]) // counts itself, before the body goes out
	case http.MethodPatch, http.MethodPut:
		if fp.readOnly {
			return false
		}
		m := fastUploadPath.FindStringSubmatch(r.URL.Path)
		if m == nil || len(m[1]) > maxNameLength {
			return false
		}
		if !fp.serveUpload(w, r, m[1], m[len(m)-1]) {
			return false
		}
		// An upload answers with no body: the response leaves only after
		// the handler (and this count) returns.
		fp.uploads.Inc()
		return true
	}
	return false
}

// commonHeaders are the headers distribution's app puts on every response.
func (fp *fastPath) commonHeaders(h http.Header) {
	for k, vs := range fp.headers {
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	h.Add("Docker-Distribution-API-Version", "registry/2.0")
}

// file is the file of driver path p (layout.go).
func (fp *fastPath) file(p string) string { return fsPath(fp.root, p) }

// serveBlob serves a committed blob after distribution's access check:
// the repository's layer link must exist and name the digest.
func (fp *fastPath) serveBlob(w http.ResponseWriter, r *http.Request, name, dgst string) bool {
	d := digest.Digest(dgst)
	link, err := os.ReadFile(fp.file(linkPath(name, "blobs", d)))
	if err != nil || string(link) != dgst {
		return false
	}
	f, err := os.Open(fp.file(blobDataPath(d)))
	if err != nil {
		return false
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return false
	}
	h := w.Header()
	fp.commonHeaders(h)
	h.Set("ETag", `"`+dgst+`"`) // If-None-Match is handled by ServeContent
	h.Set("Cache-Control", "max-age=31536000")
	h.Set("Docker-Content-Digest", dgst)
	h.Set("Content-Type", "application/octet-stream")
	// Count before serving: a client may have read the whole body before
	// ServeContent returns.
	fp.blobs.Inc()
	// The *os.File itself goes to ServeContent: net/http hands its body
	// (whole, or one range after a seek) to the connection's ReadFrom,
	// and every wrapper on the way forwards ReadFrom (statusWriter). How
	// the bytes then go out, sendfile(2) or a copy, is decided by what
	// was measured: bufConn.ReadFrom (conn.go).
	http.ServeContent(w, r, dgst, time.Time{}, f)
	return true
}

// writeFastError answers with the status distribution gives code.
func writeFastError(w http.ResponseWriter, code errcode.ErrorCode, detail any) {
	writeError(w, 0, code, detail)
}
