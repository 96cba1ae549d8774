package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// Error codes labreg answers with besides distribution's (errcode and
// registry/api/v2 register those).
var (
	// ErrorCodeNotFound is an endpoint or object that does not exist
	// outside the registry API (the UI's /api).
	ErrorCodeNotFound = errcode.Register("labreg", errcode.ErrorDescriptor{
		Value: "NOT_FOUND", Message: "not found", HTTPStatusCode: http.StatusNotFound,
		Description: "The endpoint or object named by the request does not exist.",
	})
	// ErrorCodeBadRequest is a malformed request outside the registry API.
	ErrorCodeBadRequest = errcode.Register("labreg", errcode.ErrorDescriptor{
		Value: "BAD_REQUEST", Message: "bad request", HTTPStatusCode: http.StatusBadRequest,
		Description: "The request is malformed.",
	})
)

// WriteError is the one renderer of labreg's error replies, for the
// registry's own handlers and the UI's JSON API alike: status (0: the
// status distribution gives e's code) and an OCI error body,
// {"errors":[{"code":…,"message":…,"detail":…}]}, the shape distribution's
// errcode.ServeJSON writes for the requests it answers itself. A message
// left empty is the code's own.
func WriteError(w http.ResponseWriter, status int, e errcode.Error) {
	if status == 0 {
		status = e.Code.Descriptor().HTTPStatusCode
	}
	if e.Message == "" {
		e.Message = e.Code.Message()
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errcode.Errors{e})
}

// writeError answers with status (0: the code's own) and an OCI error body
// with the code's message and detail (none when detail is nil or "").
func writeError(w http.ResponseWriter, status int, code errcode.ErrorCode, detail any) {
	if s, ok := detail.(string); ok && s == "" {
		detail = nil
	}
	WriteError(w, status, code.WithDetail(detail))
}

// recoverer turns a panic in any handler below it into a 500 with an OCI
// error body (when nothing was sent yet) and one ERROR log line that names
// the request (method and path, never the body) and carries the stack. A
// panic with http.ErrAbortHandler is net/http's way to abort a reply and
// passes on.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.LogAttrs(r.Context(), slog.LevelError, "handler panic",
				slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.String("remote", r.RemoteAddr), slog.String("panic", fmt.Sprint(v)),
				slog.String("stack", string(debug.Stack())))
			if sw.status != 0 {
				// Part of a reply is out: only cutting the connection
				// tells the client it is incomplete.
				panic(http.ErrAbortHandler)
			}
			writeError(sw, http.StatusInternalServerError, errcode.ErrorCodeUnknown,
				"internal error: the request hit a bug in labreg (logged)")
		}()
		next.ServeHTTP(sw, r)
	})
}

// distErrors wraps distribution's app: an error reply it gives for a
// failure on the server's side (a 5xx, or any reply whose detail reports
// a full disk or quota) is answered again through WriteError, naming the
// condition but not the storage path that distribution's detail carries;
// the original goes to the log. Its router's plain-text replies become
// OCI errors: 404 for a path it has no route for (an upload id the guard
// let through that its patterns refuse) NOT_FOUND, 405 for a method a
// route does not take (/v2/_catalog) UNSUPPORTED, with the router's Allow.
// Other replies pass through untouched.
func (s *Server) distErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ew := &errorWriter{ResponseWriter: w}
		next.ServeHTTP(ew, r)
		ew.finish(s.log, r)
	})
}

// maxHeldError bounds the error body errorWriter holds back.
const maxHeldError = 64 << 10

// errorWriter holds back a JSON error reply until the handler is done, so
// that finish can decide whether it may go out as it is.
type errorWriter struct {
	http.ResponseWriter
	status int
	held   bool
	plain  bool // the router's text/plain 404 or 405
	body   bytes.Buffer
}

func (e *errorWriter) WriteHeader(code int) {
	if e.status != 0 {
		return
	}
	e.status = code
	ct := e.Header().Get("Content-Type")
	if (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) && strings.HasPrefix(ct, "text/plain") {
		e.held, e.plain = true, true
		return
	}
	if code >= 400 && strings.HasPrefix(ct, "application/json") {
		e.held = true
		return
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *errorWriter) Write(p []byte) (int, error) {
	if e.status == 0 {
		e.WriteHeader(http.StatusOK)
	}
	if e.held {
		if e.body.Len() < maxHeldError {
			e.body.Write(p[:min(len(p), maxHeldError-e.body.Len())])
		}
		return len(p), nil
	}
	return e.ResponseWriter.Write(p)
}

// ReadFrom keeps the underlying response's ReadFrom (sendfile) for blob
// bodies distribution serves.
func (e *errorWriter) ReadFrom(src io.Reader) (int64, error) {
	if e.status == 0 {
		e.WriteHeader(http.StatusOK)
	}
	if rf, ok := e.ResponseWriter.(io.ReaderFrom); ok && !e.held {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{e}, src)
}

// Unwrap lets http.ResponseController reach the connection.
func (e *errorWriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }

// finish sends a held-back error reply: as it is for a client error, or
// rewritten (see distErrors).
func (e *errorWriter) finish(log *slog.Logger, r *http.Request) {
	if !e.held {
		return
	}
	switch {
	case e.plain && e.status == http.StatusNotFound:
		writeError(e.ResponseWriter, e.status, ErrorCodeNotFound, "no registry API endpoint "+r.URL.Path)
		return
	case e.plain:
		WriteError(e.ResponseWriter, e.status, errcode.ErrorCodeUnsupported.
			WithMessage(r.Method+" is not supported on "+r.URL.Path+" (allowed: "+e.Header().Get("Allow")+")"))
		return
	}
	body := e.body.String()
	cond := ""
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		if strings.Contains(body, errno.Error()) {
			cond = errno.Error()
		}
	}
	full := cond != ""
	if e.status < 500 && !full {
		e.ResponseWriter.WriteHeader(e.status)
		e.ResponseWriter.Write(e.body.Bytes())
		return
	}
	log.LogAttrs(r.Context(), slog.LevelError, "storage error",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", e.status), slog.String("reply", body))
	e.Header().Del("Content-Length")
	if full {
		writeStorageFailure(e.ResponseWriter, true, cond, "nothing was stored")
		return
	}
	WriteError(e.ResponseWriter, e.status, errcode.ErrorCodeUnknown.WithMessage(
		"the registry could not complete the request: a storage error (logged on the server); retry"))
}
