package registry

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"

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
