// Package config holds labreg's one configuration: built-in defaults, then a
// YAML file, then LABREG_* environment variables, then command-line flags
// (later sources win). Unknown YAML keys are rejected with the key named.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Config is the effective configuration of every labreg command.
type Config struct {
	Registry Registry `yaml:"registry"`
	UI       UI       `yaml:"ui"`
	Client   Client   `yaml:"client"`
	Log      Log      `yaml:"log"`
}

// Registry configures `labreg serve`.
type Registry struct {
	// Listen is the registry's listen address. Default ":5000".
	Listen string `yaml:"listen" flag:"listen" usage:"registry listen address"`
	// Data is the data directory (blobs, manifests, indexes). Default
	// /var/lib/labreg for root, else $XDG_DATA_HOME/labreg (~/.local/share/labreg).
	Data string `yaml:"data" flag:"data" usage:"data directory"`
	// Advertise is the HOST:PORT every swarm node uses to reach this registry
	// (the lab's 211.183.3.100:5000). Default: first non-loopback IPv4 of the
	// host with the listen port.
	Advertise string `yaml:"advertise" flag:"advertise" usage:"address every swarm node uses to reach the registry (HOST:PORT)"`
	// TLSCert and TLSKey turn on HTTPS when both are set. Default: plain HTTP.
	TLSCert string `yaml:"tls_cert" flag:"tls-cert" usage:"TLS certificate file (enables HTTPS with --tls-key)"`
	TLSKey  string `yaml:"tls_key" flag:"tls-key" usage:"TLS private key file"`
	// Htpasswd turns on basic auth from an htpasswd (bcrypt) file. Default: off.
	Htpasswd string `yaml:"htpasswd" flag:"htpasswd" usage:"htpasswd file (bcrypt); enables basic auth"`
	// Realm is the basic-auth realm. Default "labreg".
	Realm string `yaml:"realm" flag:"realm" usage:"basic-auth realm"`
	// AuthFailBurst is how many failed logins in a row a client address
	// (IPv4, or IPv6 /64) may make before it gets 429 with Retry-After;
	// negative: no limit. Default 10.
	AuthFailBurst int `yaml:"auth_fail_burst" flag:"auth-fail-burst" usage:"failed logins in a row allowed per client address before 429 (negative: no limit)"`
	// AuthFailInterval is how often one failed login is forgiven. Default 6s.
	AuthFailInterval time.Duration `yaml:"auth_fail_interval" flag:"auth-fail-interval" usage:"how often one failed login per client address is forgiven"`
	// ReadOnly rejects pushes and deletes. Default false.
	ReadOnly bool `yaml:"readonly" flag:"readonly" usage:"serve read-only (no push or delete)"`
	// ProxyRemoteURL turns the registry into a pull-through cache of that
	// upstream registry. Default: off.
	ProxyRemoteURL string `yaml:"proxy_remote_url" flag:"proxy-remote-url" usage:"upstream registry URL for pull-through-cache mode"`
	// ProxyCredentialsFile holds USER:PASSWORD for the origin of a mirror
	// (proxy_remote_url); never printed. Default: none.
	ProxyCredentialsFile string `yaml:"proxy_credentials_file" flag:"proxy-credentials-file" usage:"file with USER:PASSWORD for the proxy remote (a mirror's origin)"`
	// DrainTimeout is how long shutdown waits for requests in flight. Default 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout" flag:"drain-timeout" usage:"how long shutdown waits for requests in flight"`
	// GCDrainTimeout bounds how long garbage collection (and scrub --repair)
	// waits for writes in flight once the registry is read-only; writes
	// still running then are aborted with 503 and their clients retry.
	// Default 30s.
	GCDrainTimeout time.Duration `yaml:"gc_drain_timeout" flag:"gc-drain-timeout" usage:"how long GC waits for writes in flight before aborting them (503, clients retry)"`
	// Storage is where blobs and manifests live: "filesystem" (<data>/storage)
	// or s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION[&redirect=true] (an
	// S3-compatible store, path-style whenever an endpoint is given, TLS from
	// the endpoint's scheme). Default "filesystem".
	Storage string `yaml:"storage" flag:"storage" usage:"filesystem, or s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION[&redirect=true]"`
	// S3AccessKeyFile and S3SecretKeyFile hold the S3 credentials (e.g. swarm
	// secrets). Default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, else the
	// shared credentials file (~/.aws/credentials).
	S3AccessKeyFile string `yaml:"s3_access_key_file" flag:"s3-access-key-file" usage:"file holding the S3 access key (default: AWS environment, ~/.aws/credentials)"`
	S3SecretKeyFile string `yaml:"s3_secret_key_file" flag:"s3-secret-key-file" usage:"file holding the S3 secret key"`
	// HTTPSecretFile holds the secret that signs upload state; every replica
	// on shared storage needs the same one. Default: a secret generated in
	// the data directory (filesystem only; required with s3://).
	HTTPSecretFile string `yaml:"http_secret_file" flag:"http-secret-file" usage:"file holding the HTTP secret shared by all replicas (required with s3:// storage)"`
	// Redis is redis://[USER[:PASSWORD]@]HOST:PORT[/DB] for distribution's
	// blob-descriptor cache. Default: off.
	Redis string `yaml:"redis" flag:"redis" usage:"redis://[USER[:PASSWORD]@]HOST:PORT[/DB] for the blob-descriptor cache (default: none)" redact:"url"`
	// ReadHeaderTimeout bounds reading a request's headers. Default 30s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" flag:"read-header-timeout" usage:"how long a client may take to send request headers"`
	// IdleTimeout closes keep-alive connections idle this long. Default 2m.
	IdleTimeout time.Duration `yaml:"idle_timeout" flag:"idle-timeout" usage:"how long an idle keep-alive connection stays open"`
	// BodyTimeout ends a request whose body sends no byte for this long.
	// Default 60s.
	BodyTimeout time.Duration `yaml:"body_timeout" flag:"body-timeout" usage:"end a request whose body sends no byte for this long"`
	// MaxUploads caps blob uploads served at once; beyond it clients get
	// 429 with Retry-After. Default 1024.
	MaxUploads int `yaml:"max_uploads" flag:"max-uploads" usage:"blob uploads served at once (beyond: 429, retry)"`
	// UploadMemory bounds the memory uploads hold, in bytes, taken as data
	// arrives (1 MiB pieces; past it uploads go on with small buffers).
	// Default 268435456 (256 MiB).
	UploadMemory int64 `yaml:"upload_memory" flag:"upload-memory" usage:"bytes of memory all uploads together may hold"`
	// MinFreePercent makes /healthz unhealthy while the data dir's file
	// system has less than this share (%) free. Default 1.
	MinFreePercent float64 `yaml:"min_free_percent" flag:"min-free-percent" usage:"/healthz is unhealthy below this much free space on the data dir (%)"`
	// UploadPurgeAge is the age at which abandoned uploads are removed.
	// Default 24h.
	UploadPurgeAge time.Duration `yaml:"upload_purge_age" flag:"upload-purge-age" usage:"remove uploads abandoned for this long"`
	// EventsKeep bounds the history (<data>/events.jsonl) as "AGE,COUNT":
	// events older than AGE, or beyond the COUNT newest, go, and so do
	// pull counts older than AGE (pulls are counted per repository, tag
	// and hour, not kept one by one). Default "90d,100000".
	EventsKeep string `yaml:"events_keep" flag:"events-keep" usage:"history kept: AGE,COUNT (events older than AGE or beyond the COUNT newest go; pull counts older than AGE)"`
	// EventsCompactSize is how many bytes the history file may grow by
	// before it is compacted in place (or by its compacted size, when that
	// is larger). Default 16777216 (16 MiB).
	EventsCompactSize int64 `yaml:"events_compact_size" flag:"events-compact-size" usage:"bytes the history file may grow by before it is compacted (or by its compacted size, if larger)"`
}

// UI configures the catalog web UI served by `labreg serve`.
type UI struct {
	// Listen is the UI listen address; empty disables the UI. Default ":8080".
	Listen string `yaml:"listen" flag:"ui-listen" usage:"web UI listen address (empty: no UI)"`
	// ReadOnly hides and refuses every delete and GC action. Default false.
	ReadOnly bool `yaml:"readonly" flag:"ui-readonly" usage:"web UI without delete or GC"`
	// Hosts are the comma-separated host names the UI answers to (Host and
	// Origin headers; IP addresses and localhost always pass). Default: the
	// hosts of ui.listen and registry.advertise.
	Hosts string `yaml:"hosts" flag:"ui-hosts" usage:"comma-separated host names the web UI answers to (default: ui.listen and registry.advertise hosts)"`
}

// Client configures the commands that talk to a registry (build, deploy, ls, gc).
type Client struct {
	// Registry is the HOST:PORT the client pushes to and resolves short names
	// against. Default: registry.advertise.
	Registry string `yaml:"registry" flag:"registry" usage:"registry HOST:PORT to push to (default: registry.advertise)"`
	// BuildkitAddr is the buildkitd address for Dockerfiles that RUN.
	// Default: $BUILDKIT_HOST, else the Docker Engine's embedded BuildKit.
	BuildkitAddr string `yaml:"buildkit_addr" flag:"buildkit-addr" usage:"buildkitd address (default $BUILDKIT_HOST, else the Docker Engine)"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `yaml:"level" flag:"log-level" usage:"log level: debug, info, warn, error"`
	// Format is text or json. Default "text".
	Format string `yaml:"format" flag:"log-format" usage:"log format: text or json"`
}

// Default returns the built-in defaults. Advertise stays empty until
// Resolve fills it from the host's addresses.
func Default() *Config {
	return &Config{
		Registry: Registry{
			Listen:       ":5000",
			Data:         DefaultDataDir(),
			Realm:        "labreg",
			DrainTimeout: 30 * time.Second,
			// #10: the read-only window of GC is bounded.
			GCDrainTimeout: 30 * time.Second,
			Storage:        "filesystem",
			// #10: bounded resources under slow or idle clients.
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			BodyTimeout:       60 * time.Second,
			MaxUploads:        1024,
			UploadMemory:      256 << 20,
			MinFreePercent:    1,
			UploadPurgeAge:    24 * time.Hour,
			AuthFailBurst:     10,
			AuthFailInterval:  6 * time.Second,
			// #21: the history is bounded.
			EventsKeep:        DefaultEventsKeep.String(),
			EventsCompactSize: 16 << 20,
		},
		UI:  UI{Listen: ":8080"},
		Log: Log{Level: "info", Format: "text"},
	}
}

// DefaultDataDir is /var/lib/labreg for root, else $XDG_DATA_HOME/labreg
// or ~/.local/share/labreg.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/labreg"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "labreg")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "labreg")
	}
	return filepath.Join(os.TempDir(), "labreg")
}

// Resolve fills values derived from others: the advertised address from the
// host's first non-loopback IPv4 and the listen port, the client registry
// from the advertised address.
func (c *Config) Resolve() error {
	if c.Registry.Advertise == "" {
		_, port, err := net.SplitHostPort(c.Registry.Listen)
		if err != nil {
			return fmt.Errorf("registry.listen: %q is not HOST:PORT", c.Registry.Listen)
		}
		c.Registry.Advertise = net.JoinHostPort(FirstHostIPv4(), port)
	}
	if c.Client.Registry == "" {
		c.Client.Registry = c.Registry.Advertise
	}
	return nil
}

// FirstHostIPv4 returns the first non-loopback IPv4 address of this host,
// or 127.0.0.1 when there is none.
func FirstHostIPv4() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1"
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		// Docker's own bridges are not reachable from other nodes.
		if strings.HasPrefix(ifc.Name, "docker") || strings.HasPrefix(ifc.Name, "veth") || strings.HasPrefix(ifc.Name, "br-") {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// Validate checks every value and says which one is wrong.
func (c *Config) Validate() error {
	var errs []error
	hostPort := func(key, v string, emptyOK bool) {
		if v == "" && emptyOK {
			return
		}
		if _, p, err := net.SplitHostPort(v); err != nil || p == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not HOST:PORT", key, v))
		} else if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("%s: %q has no valid port", key, v))
		}
	}
	hostPort("registry.listen", c.Registry.Listen, false)
	hostPort("ui.listen", c.UI.Listen, true)
	hostPort("registry.advertise", c.Registry.Advertise, false)
	hostPort("client.registry", c.Client.Registry, false)
	if c.Registry.Data == "" {
		errs = append(errs, errors.New("registry.data: must not be empty"))
	}
	if (c.Registry.TLSCert == "") != (c.Registry.TLSKey == "") {
		errs = append(errs, errors.New("registry.tls_cert and registry.tls_key: set both or neither"))
	}
	if st, err := ParseStorage(c.Registry.Storage); err != nil {
		errs = append(errs, fmt.Errorf("registry.storage: %w", err))
	} else if st.Shared() && c.Registry.HTTPSecretFile == "" {
		errs = append(errs, errors.New("registry.http_secret_file: required with shared storage (s3://): every replica needs the same HTTP secret"))
	}
	if (c.Registry.S3AccessKeyFile == "") != (c.Registry.S3SecretKeyFile == "") {
		errs = append(errs, errors.New("registry.s3_access_key_file and registry.s3_secret_key_file: set both or neither"))
	}
	if c.Registry.Redis != "" {
		if _, err := ParseRedis(c.Registry.Redis); err != nil {
			errs = append(errs, fmt.Errorf("registry.redis: %w", err))
		}
	}
	if c.Registry.AuthFailInterval <= 0 {
		errs = append(errs, errors.New("registry.auth_fail_interval: must be positive"))
	}
	if c.Registry.DrainTimeout < 0 {
		errs = append(errs, errors.New("registry.drain_timeout: must not be negative"))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"registry.read_header_timeout", c.Registry.ReadHeaderTimeout}, {"registry.idle_timeout", c.Registry.IdleTimeout}, {"registry.body_timeout", c.Registry.BodyTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive (resources stay bounded)", d.key))
		}
	}
	if c.Registry.MaxUploads <= 0 {
		errs = append(errs, errors.New("registry.max_uploads: must be positive"))
	}
	if c.Registry.UploadMemory < 1<<20 {
		errs = append(errs, errors.New("registry.upload_memory: must be at least 1048576 (1 MiB)"))
	}
	if c.Registry.MinFreePercent <= 0 || c.Registry.MinFreePercent >= 100 {
		errs = append(errs, errors.New("registry.min_free_percent: must be between 0 and 100"))
	}
	if c.Registry.UploadPurgeAge < time.Minute {
		errs = append(errs, errors.New("registry.upload_purge_age: must be at least 1m"))
	}
	if _, err := ParseEventsKeep(c.Registry.EventsKeep); err != nil {
		errs = append(errs, fmt.Errorf("registry.events_keep: %w", err))
	}
	if c.Registry.EventsCompactSize < 64<<10 {
		errs = append(errs, errors.New("registry.events_compact_size: must be at least 65536 (64 KiB)"))
	}
	if c.Registry.GCDrainTimeout <= 0 {
		errs = append(errs, errors.New("registry.gc_drain_timeout: must be positive (the read-only window of GC is bounded)"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", c.Log.Format))
	}
	return errors.Join(errs...)
}

// Annotated renders the configuration as YAML with a comment on each value
// that ends with where the value came from (see Origins).
func (c *Config) Annotated(o Origins) []byte {
	return c.render(func(key string) string { return "; from: " + o.Of(key) })
}

// YAML renders the configuration as a YAML document.
func (c *Config) YAML() ([]byte, error) {
	return c.render(func(string) string { return "" }), nil
}

// render writes every field as YAML, each commented with its variable and
// flag, then whatever note adds for its key.
func (c *Config) render(note func(key string) string) []byte {
	var b bytes.Buffer
	sec := ""
	for _, f := range c.Fields() {
		s, k, _ := strings.Cut(f.Key, ".")
		if s != sec {
			fmt.Fprintf(&b, "%s:\n", s)
			sec = s
		}
		v := f.String()
		if f.Kind == reflect.String {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(&b, "  %s: %s  # %s, --%s%s\n", k, v, f.Env, f.Flag, note(f.Key))
	}
	return b.Bytes()
}
