package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes assembles the handler chain: access log and metrics around
// labreg's own endpoints, with distribution's app underneath. It fails
// when the metrics cannot be registered.
func (s *Server) routes() (http.Handler, error) {
	m, err := newMetrics(s.metrics, s.opts.DataDir)
	if err != nil {
		return nil, err
	}
	fast, err := s.fastPaths(s.mirror(s.distErrors(s.app))) // mirror: proxy.go; distErrors: errors.go
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.serveHealth)
	mux.Handle("/", fast)
	// recoverer (errors.go) turns a handler's panic into a 500;
	// authenticate (auth.go) refuses bad credentials before anything
	// touches storage or takes an upload slot; limits (upload cap, body
	// progress): limits.go; hooks (gate, index, events): events.go;
	// ociAPI: manifest.go.
	return s.instrument(m, s.recoverer(s.authenticate(s.limits(s.hooks(s.ociAPI(mux)))))), nil
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	checks := s.health.CheckStatus(r.Context())
	if low := s.lowSpace(); low != "" {
		all := map[string]string{"storage_free": low}
		for k, v := range checks {
			all[k] = v
		}
		checks = all
	}
	w.Header().Set("Content-Type", "application/json")
	if len(checks) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{"ok": len(checks) == 0, "failing": checks})
}

// statusWriter records the status and bytes written. It forwards
// ReadFrom, so that a body copied from a reader that has one keeps the
// underlying response's fast path.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom passes a copy on to the underlying response's ReadFrom, so
// that the blob fast path's file reaches the connection, which decides
// between sendfile and a copy (bufConn.ReadFrom, conn.go).
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytesOut prometheus.Counter
	// free and size are the data dir's file system's free (for
	// unprivileged users) and total bytes, read at each scrape.
	free, size prometheus.GaugeFunc
}

func newMetrics(reg *prometheus.Registry, dataDir string) (*metrics, error) {
	space := func(pick func(FreeSpace) int64) func() float64 {
		return func() float64 {
			fs, err := freeSpace(dataDir)
			if err != nil {
				return -1
			}
			return float64(pick(fs))
		}
	}
	m := &metrics{
		free: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "labreg_storage_free_bytes", Help: "Free bytes on the data directory's file system (-1: unreadable).",
		}, space(func(f FreeSpace) int64 { return f.Free })),
		size: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "labreg_storage_size_bytes", Help: "Size in bytes of the data directory's file system (-1: unreadable).",
		}, space(func(f FreeSpace) int64 { return f.Size })),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "labreg_http_requests_total", Help: "HTTP requests by method (other: not GET, HEAD, PUT, POST, PATCH, DELETE or OPTIONS) and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "labreg_http_request_duration_seconds", Help: "HTTP request latency by method (as in labreg_http_requests_total).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"method"}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "labreg_http_response_bytes_total", Help: "Response body bytes sent.",
		}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.bytesOut, err = register(reg, m.bytesOut); err != nil {
		return nil, err
	}
	for _, c := range []prometheus.Collector{m.free, m.size, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if _, err := register(reg, c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// register registers c with reg, or returns the collector reg already
// holds for the same metrics (a registry passed in by the caller, shared
// by several servers). Any other conflict is an error.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("registering metrics: %w", err)
}

// methodLabel is the method label of a request's metrics: the method
// when it is one the registry could serve, "other" for any other token a
// client sends (each would be a new series otherwise, kept for the life
// of the process: #18). The status code label is bounded already: the
// handlers choose it, and net/http refuses codes outside 100-999.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return method
	}
	return "other"
}

// instrument writes one access-log line per request and counts it.
func (s *Server) instrument(m *metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		d := time.Since(start)
		method := methodLabel(r.Method)
		m.requests.WithLabelValues(method, strconv.Itoa(sw.status)).Inc()
		m.duration.WithLabelValues(method).Observe(d.Seconds())
		m.bytesOut.Add(float64(sw.bytes))
		s.log.LogAttrs(r.Context(), levelFor(sw.status), "request",
			slogAttrs(r, sw.status, sw.bytes, d)...)
	})
}
