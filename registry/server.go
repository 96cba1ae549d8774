// Package registry embeds the distribution/v3 registry as a library and adds
// what labreg needs on top of it: the OCI 1.1 referrers API, fast paths
// that serve committed blobs and take uploads straight from the data dir
// (a blob body goes out by the rule measured in conn.go: a copy through a
// large buffer, sendfile past a bound), request logging through log/slog, Prometheus metrics, a health endpoint and
// graceful shutdown.
//
// A Server is created with New, bound with Listen and run with Serve until
// its context ends; it never exits the process or installs signal handlers.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/health"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/labreg/labreg/config"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the data dir
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"   // tests and benchmarks
)

// Options configures a Server. The zero value of each field is its default.
type Options struct {
	// DataDir holds all registry state. Required.
	DataDir string
	// TLSCert and TLSKey enable HTTPS when both are set. Default: plain HTTP.
	TLSCert, TLSKey string
	// Htpasswd enables basic auth from this htpasswd (bcrypt) file. Default: off.
	Htpasswd string
	// Realm is the basic-auth realm. Default "labreg".
	Realm string
	// AuthLimit bounds failed logins per client address (auth.go).
	// Default: 10 in a row, then one every 6s.
	AuthLimit AuthLimit
	// ReadOnly rejects pushes and deletes. Default false.
	ReadOnly bool
	// ProxyRemoteURL makes the registry a pull-through cache (a mirror,
	// proxy.go) of that origin. Default: off.
	ProxyRemoteURL string
	// ProxyCredentialsFile holds USER:PASSWORD for the origin of a mirror.
	// Default: credentials in ProxyRemoteURL, else none.
	ProxyCredentialsFile string
	// DrainTimeout bounds how long Serve waits for requests in flight after
	// its context ends. Default 30s.
	DrainTimeout time.Duration
	// GCDrainTimeout bounds how long GC (ReadOnly) waits for writes in
	// flight once the registry is read-only; those still running then are
	// aborted with 503 (their clients retry). Default 30s.
	GCDrainTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers. Default 30s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long. Default 2m.
	IdleTimeout time.Duration
	// BodyTimeout ends a request whose body sends no byte for this long
	// (within a sixteenth of it). Default 60s.
	BodyTimeout time.Duration
	// MaxUploads caps the blob uploads (PATCH, PUT, monolithic POST)
	// served at once; beyond it they get 429 TOOMANYREQUESTS with
	// Retry-After. Default 1024.
	MaxUploads int
	// UploadMemory bounds the memory uploads hold for receiving, writing
	// and hashing, taken in 1 MiB pieces as data arrives; past it uploads
	// go on with small buffers (16 KiB, two each). Default 256 MiB.
	UploadMemory int64
	// MinFreePercent makes /healthz report unhealthy (503) while the data
	// dir's file system has less than this share free. Default 1 (%).
	MinFreePercent float64
	// UploadPurgeAge is the age at which abandoned uploads are purged
	// (checked at most daily, as often as this age when shorter). Default 24h.
	UploadPurgeAge time.Duration
	// Logger receives the access log and distribution's own log lines.
	// Default: discard.
	Logger *slog.Logger
	// Metrics registers the registry's Prometheus collectors. Default: a
	// fresh registry served at /metrics.
	Metrics *prometheus.Registry
	// Storage is where blobs and manifests live (config.ParseStorage):
	// "" or "filesystem" for DataDir/storage, or
	// s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION[&redirect=true].
	Storage string
	// S3AccessKeyFile and S3SecretKeyFile hold the S3 credentials. Default:
	// the AWS environment variables, else ~/.aws/credentials.
	S3AccessKeyFile, S3SecretKeyFile string
	// HTTPSecretFile holds the secret that signs upload state. Required
	// when Storage is shared (s3://); default: one generated in DataDir.
	HTTPSecretFile string
	// Redis is redis://[USER[:PASSWORD]@]HOST:PORT[/DB] for distribution's
	// blob-descriptor cache. Default: no cache.
	Redis string
	// EventsKeep bounds the history (config.ParseEventsKeep: "AGE,COUNT"):
	// events older than AGE or beyond the COUNT newest go, and so do pull
	// counts older than AGE. Default "90d,100000".
	EventsKeep string
	// EventsCompactSize is how many bytes the history file may grow by
	// before it is compacted (or by its compacted size, when that is
	// larger). Default 16 MiB.
	EventsCompactSize int64
}

// Server is an embedded OCI registry.
type Server struct {
	opts  Options
	app   *handlers.App
	store *backend // the one storage driver (storage.go)
	// descriptors is distribution's Redis blob descriptor cache, cleared
	// of whatever is removed (descriptors.go); nil without Redis.
	descriptors *descriptorCache
	redis       *config.Redis // registry.redis; nil without
	health      *health.Registry
	extras      *extras // catalog, events, read-only gate (catalog.go)
	// auth checks every /v2 request's credentials before anything else
	// runs (auth.go); nil when auth is off. distribution has no auth of
	// its own configured: labreg's check is the one.
	auth    *Authenticator
	handler http.Handler
	log     *slog.Logger
	metrics *prometheus.Registry
	ln      net.Listener
	// mirrorCfg is the origin of a mirror (proxy.go); nil otherwise.
	mirrorCfg *mirrorConfig
}

// New checks the data directory and builds the registry. It does not listen.
func New(ctx context.Context, opts Options) (*Server, error) {
	started := time.Now() // temporaries older than this are a crash's (removeStrayTemps)
	if opts.DataDir == "" {
		return nil, errors.New("registry: no data directory")
	}
	if opts.Realm == "" {
		opts.Realm = "labreg"
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.GCDrainTimeout == 0 {
		opts.GCDrainTimeout = 30 * time.Second
	}
	if opts.ReadHeaderTimeout == 0 {
		opts.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.BodyTimeout == 0 {
		opts.BodyTimeout = defaultBodyTimeout
	}
	if opts.MaxUploads == 0 {
		opts.MaxUploads = defaultMaxUploads
	}
	if opts.UploadMemory == 0 {
		opts.UploadMemory = defaultUploadMemory
	}
	if opts.MinFreePercent == 0 {
		opts.MinFreePercent = 1
	}
	if opts.UploadPurgeAge == 0 {
		opts.UploadPurgeAge = 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = prometheus.NewRegistry()
	}
	if err := checkDataDir(opts.DataDir); err != nil {
		return nil, err
	}
	var authn *Authenticator
	if opts.Htpasswd != "" {
		var err error
		if authn, err = NewAuthenticator(opts.Htpasswd, opts.Realm, opts.AuthLimit); err != nil {
			return nil, err
		}
	}
	store, err := openBackend(ctx, opts)
	if err != nil {
		return nil, err
	}
	var secret string
	switch {
	case opts.HTTPSecretFile != "":
		if secret, err = readSecretFile("http secret file", opts.HTTPSecretFile); err != nil {
			return nil, err
		}
	case store.spec.Shared():
		return nil, fmt.Errorf("http secret file: required with shared storage (%s): set registry.http_secret_file to the same file on every replica", store.spec)
	default:
		if secret, err = httpSecret(opts.DataDir); err != nil {
			return nil, err
		}
	}
	if store.spec.Shared() {
		if err := store.checkShared(ctx, secret); err != nil {
			return nil, err
		}
	}
	if _, err := config.ParseEventsKeep(opts.EventsKeep); err != nil {
		return nil, fmt.Errorf("events keep: %w", err)
	}
	var redis *config.Redis
	if opts.Redis != "" {
		r, err := config.ParseRedis(opts.Redis)
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		redis = &r
	}

	mc, err := newMirrorConfig(opts)
	if err != nil {
		return nil, err
	}
	cfg := distributionConfig(opts, store.section(), secret, redis)
	mc.apply(cfg)
	hr := health.NewRegistry()
	app, err := newApp(ctx, cfg, hr)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, app: app, store: store, health: hr, log: opts.Logger, metrics: opts.Metrics, auth: authn, redis: redis}
	if redis != nil {
		s.descriptors = openDescriptorCache(redis)
	}
	s.mirrorCfg = mc
	if s.extras, err = newExtras(s); err != nil {
		return nil, err
	}
	if m := s.extras.member; m != nil {
		hr.RegisterFunc("storagedriver_"+store.name, func(context.Context) error { return m.health() })
	}
	if s.handler, err = s.routes(); err != nil {
		return nil, err
	}
	// After the start's own work (the catalog index, its verification):
	// walking a large data dir competes with it, and what it removes is
	// only litter.
	time.AfterFunc(strayTempsDelay, func() { s.removeStrayTemps(started) })
	return s, nil
}

// distributionConfig is the configuration.Configuration that
// configuration.Parse would have produced for these options: Parse applies
// defaults (catalog size, tag concurrency) that a Go-built value lacks.
func distributionConfig(opts Options, storage configuration.Storage, secret string, redis *config.Redis) *configuration.Configuration {
	cfg := &configuration.Configuration{}
	cfg.Version = configuration.MajorMinorVersion(0, 1)
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true // labreg writes its own access log
	cfg.HTTP.Secret = secret
	cfg.HTTP.RelativeURLs = true
	cfg.Catalog.MaxEntries = 1000
	cfg.Storage = storage
	cfg.Storage["delete"] = configuration.Parameters{"enabled": true}
	cfg.Storage["maintenance"] = configuration.Parameters{
		"uploadpurging": map[any]any{"enabled": true, "age": opts.UploadPurgeAge.String(),
			"interval": max(time.Minute, min(24*time.Hour, opts.UploadPurgeAge)).String(), "dryrun": false},
		"readonly": map[any]any{"enabled": opts.ReadOnly},
	}
	cfg.Storage["tag"] = configuration.Parameters{"concurrencylimit": 8}
	if redis != nil {
		cfg.Redis.Options.Addrs = []string{redis.Addr}
		cfg.Redis.Options.Username = redis.Username
		cfg.Redis.Options.Password = redis.Password
		cfg.Redis.Options.DB = redis.DB
		cfg.Storage["cache"] = configuration.Parameters{"blobdescriptor": "redis"}
	}
	// Foreign (non-distributable) layers carry URLs; accept any http(s) URL.
	cfg.Validation.Manifests.URLs.Allow = []string{"^https?://"}
	if opts.ProxyRemoteURL != "" {
		cfg.Proxy.RemoteURL = opts.ProxyRemoteURL
	}
	if _, shared := storage["s3"]; !shared {
		// On S3 this check is a LIST every interval (a Stat of the root):
		// more than the rest of an idle replica's requests together. A
		// replica reads the store every second anyway (journal.go): its
		// health comes from there (member.health).
		cfg.Health.StorageDriver.Enabled = true
		cfg.Health.StorageDriver.Interval = 10 * time.Second
		cfg.Health.StorageDriver.Threshold = 3
	}
	return cfg
}

// newApp turns distribution's construction panics into errors.
func newApp(ctx context.Context, cfg *configuration.Configuration, hr *health.Registry) (app *handlers.App, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("starting registry: %v", r)
		}
	}()
	app = handlers.NewApp(ctx, cfg)
	app.RegisterHealthChecks(hr)
	return app, nil
}

func checkDataDir(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o755); err != nil {
		return fmt.Errorf("data directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".labreg-probe-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	if _, err := os.ReadDir(filepath.Join(dir, "storage")); err != nil {
		return fmt.Errorf("data directory %s is not readable: %w", dir, err)
	}
	return nil
}

// httpSecret returns the secret that signs upload state, kept in the data
// dir so that uploads survive a restart.
func httpSecret(dir string) (string, error) {
	p := filepath.Join(dir, "http-secret")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	s := hex.EncodeToString(buf)
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", p, err)
	}
	return s, nil
}

// RouteLogrus sends distribution's log lines (warnings and errors; it logs
// through logrus, which is process-global) to l instead of stderr. It
// changes process-wide state, so New and OfflineGC never call it: the
// program's main does, once; a later call replaces l (one hook, never
// more). Until it is called, distribution logs as logrus does by default.
func RouteLogrus(l *slog.Logger) {
	logrusTarget.Store(l)
	logrusOnce.Do(func() {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.WarnLevel)
		logrus.AddHook(slogHook{})
	})
}

var (
	logrusOnce   sync.Once
	logrusTarget atomic.Pointer[slog.Logger]
)

// slogHook forwards logrus entries to the logger RouteLogrus set.
type slogHook struct{}

func (slogHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (slogHook) Fire(e *logrus.Entry) error {
	l := logrusTarget.Load()
	if l == nil {
		return nil
	}
	lvl := slog.LevelWarn
	if e.Level <= logrus.ErrorLevel {
		lvl = slog.LevelError
	}
	if st, ok := e.Data["http.response.status"].(int); ok && st >= 400 && st < 500 {
		// "response completed with error" for a client's 4xx: the expected
		// 404 of every existence check (docker push, labreg build). The
		// access log has the request; details at debug.
		lvl = slog.LevelDebug
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		if strings.HasPrefix(k, "http.request.") || k == "go.version" || k == "instance.id" || k == "service" {
			continue
		}
		attrs = append(attrs, k, v)
	}
	l.Log(context.Background(), lvl, e.Message, attrs...)
	return nil
}

// Handler returns the registry's HTTP handler: /v2/ API, /healthz, /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// Listen binds addr (":5000"). A port in use is reported here.
func (s *Server) Listen(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("registry cannot listen on %s: %w", addr, err)
	}
	s.ln = readBufferedListener{ln}
	return ln.Addr(), nil
}

// Serve serves on the listener bound by Listen until ctx ends, then drains
// requests in flight for at most DrainTimeout.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("registry: Serve before Listen")
	}
	if f := s.extras.serveLock; f != nil {
		defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	}
	defer s.keepIndex(ctx)() // saved after the drain, before the lock goes
	if s.extras.journal != nil {
		s.joinCluster(ctx)
		// The cluster's loops outlive ctx until the requests in flight
		// are drained (Shutdown below): a replica stays visible to a GC
		// elsewhere while it may still write.
		jctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		followed := make(chan struct{})
		go func() {
			defer close(followed)
			s.followJournal(jctx)
		}()
		defer func() {
			stop()
			select {
			case <-followed:
			case <-time.After(beatTimeout):
			}
		}()
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() {
		var err error
		if s.opts.TLSCert != "" {
			err = srv.ServeTLS(s.ln, s.opts.TLSCert, s.opts.TLSKey)
		} else {
			err = srv.Serve(s.ln)
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		s.app.Shutdown()
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down", "drain_timeout", s.opts.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.DrainTimeout)
	defer cancel()
	err := srv.Shutdown(dctx)
	s.app.Shutdown()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("drain timeout %s: requests still in flight were cut", s.opts.DrainTimeout)
	}
	return err
}
