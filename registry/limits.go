package registry

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"
)

// Resource bounds (#10): how long a client may take, how many uploads run
// at once and how much memory they may hold. Each is an Options field; the
// defaults are below.
const (
	defaultReadHeaderTimeout = 30 * time.Second
	defaultIdleTimeout       = 2 * time.Minute
	defaultBodyTimeout       = 60 * time.Second
	defaultMaxUploads        = 1024
	defaultUploadMemory      = 256 << 20
	// uploadRetryAfter is what an upload refused for the cap is told to wait.
	uploadRetryAfter = 5 * time.Second
)

// limits sits outermost: it refuses uploads beyond Options.MaxUploads with
// 429 TOOMANYREQUESTS and Retry-After, and ends any request whose body
// makes no progress for Options.BodyTimeout.
func (s *Server) limits(next http.Handler) http.Handler {
	maxUploads := int64(s.opts.MaxUploads)
	var uploads atomic.Int64
	_ = s.metrics.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "labreg_uploads_in_flight", Help: "Blob uploads (PATCH, PUT, monolithic POST) being served.",
	}, func() float64 { return float64(uploads.Load()) }))
	bodyTimeout := s.opts.BodyTimeout
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isBlobUpload(r) {
			if uploads.Add(1) > maxUploads {
				uploads.Add(-1)
				w.Header().Set("Retry-After", strconv.Itoa(int(uploadRetryAfter.Seconds())))
				_ = errcode.ServeJSON(w, errcode.ErrorCodeTooManyRequests.WithMessage(
					"too many uploads in progress (the limit is "+strconv.FormatInt(maxUploads, 10)+"); retry in a few seconds"))
				return
			}
			defer uploads.Add(-1)
		}
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && bodyTimeout > 0 {
			r.Body = newProgressBody(r.Body, http.NewResponseController(w), bodyTimeout)
		}
		next.ServeHTTP(w, r)
	})
}

// isBlobUpload reports whether r carries blob data: PATCH or PUT of an
// upload, or a monolithic POST with a body.
func isBlobUpload(r *http.Request) bool {
	switch r.Method {
	case http.MethodPatch, http.MethodPut:
	case http.MethodPost:
		if r.ContentLength == 0 {
			return false
		}
	default:
		return false
	}
	return strings.Contains(r.URL.Path, "/blobs/uploads/")
}

// progressBody ends a request body that makes no progress: before a read
// it moves the connection's read deadline to d from now, so that a client
// sending nothing for d gets its read failed (net/http then closes the
// connection). To keep the per-read cost at a clock read, the deadline is
// moved only when a sixteenth of d has passed since it was last moved, to
// d + d/16 from then: silence ends the request after between d and d+d/16.
// At the end of the body the deadline is cleared, so that net/http's
// background read (which watches for the client going away while the
// handler works) is not cut.
type progressBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	d     time.Duration
	armed time.Time // when the deadline was last moved
	off   bool      // the deadline could not be set (not a connection)
}

func newProgressBody(b io.ReadCloser, rc *http.ResponseController, d time.Duration) *progressBody {
	return &progressBody{ReadCloser: b, rc: rc, d: d}
}

func (b *progressBody) Read(p []byte) (int, error) {
	if !b.off {
		if now := time.Now(); now.Sub(b.armed) >= b.d/16 {
			if b.rc.SetReadDeadline(now.Add(b.d+b.d/16)) != nil {
				b.off = true
			}
			b.armed = now
		}
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.off {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// memBudget is the memory uploads may hold beyond their first small
// pieces, in uploadBufSize pieces, taken as data arrives.
type memBudget struct{ free atomic.Int64 }

func newMemBudget(bytes int64) *memBudget {
	b := &memBudget{}
	b.free.Store(max(1, bytes/uploadBufSize))
	return b
}

// take takes one piece if the budget has one; a nil budget always has.
func (b *memBudget) take() bool {
	if b == nil {
		return true
	}
	if b.free.Add(-1) < 0 {
		b.free.Add(1)
		return false
	}
	return true
}

func (b *memBudget) give() {
	if b != nil {
		b.free.Add(1)
	}
}
