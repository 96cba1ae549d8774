// Package ui is labreg's catalog web UI and its JSON API: repositories,
// tags, image details, deletes, garbage collection, events and status,
// rendered with html/template from assets embedded in the binary (no CDN,
// every page readable without JavaScript).
//
// It reads the registry through the small interfaces below, which
// *registry.Server and *registry.Catalog implement in-process; it never
// talks HTTP to the registry, so a page costs no round trip per tag.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/labreg/labreg/registry"
)

// Catalog is the registry content the UI shows and deletes
// (*registry.Catalog).
type Catalog interface {
	Repositories(ctx context.Context) ([]registry.Repository, error)
	Tags(ctx context.Context, repo string) (registry.Repository, []registry.Tag, error)
	Resolve(ctx context.Context, repo, ref string) (digest.Digest, error)
	Manifest(ctx context.Context, repo string, dgst digest.Digest) (*registry.Manifest, error)
	TagsOf(ctx context.Context, repo string, dgst digest.Digest) ([]string, error)
	DeleteTag(ctx context.Context, repo, tag string) (digest.Digest, error)
	DeleteManifest(ctx context.Context, repo string, dgst digest.Digest) ([]string, error)
}

// History is the registry's history (*registry.EventLog): events, and
// pulls counted per repository, reference and hour.
type History interface {
	Page(offset, limit int, keep func(registry.Event) bool) ([]registry.Event, int)
	Add(e registry.Event)
	// Pulls is the pull history of repo's ref (tag or digest; "": all).
	Pulls(repo, ref string) registry.PullStats
}

// Collector runs garbage collection (*registry.Server).
type Collector interface {
	GC(ctx context.Context, opts registry.GCOptions) (*registry.GCResult, error)
}

// Scrubber verifies (and repairs) the registry's storage (*registry.Server).
type Scrubber interface {
	Scrub(ctx context.Context, opts registry.ScrubOptions) (*registry.ScrubReport, error)
}

// Referrers lists the manifests whose subject is a given manifest
// (signatures, SBOMs): the registry's OCI referrers API, in-process.
type Referrers interface {
	Referrers(ctx context.Context, repo string, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error)
}

// Setting is one configuration value shown on the status page.
type Setting struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Options configures the UI. Catalog and History are required.
type Options struct {
	Catalog Catalog
	History History
	// GC runs garbage collection; nil hides it.
	GC Collector
	// Scrub verifies storage from the status page and /api/scrub; nil
	// hides it. Repair is refused in a read-only UI.
	Scrub Scrubber
	// Referrers lists referrers on the detail page; nil shows none.
	Referrers Referrers
	// ReadOnlyState reports the registry's runtime read-only mode (during
	// GC) for a banner. Default: never read-only.
	ReadOnlyState func() (bool, string)
	// MirrorOf is the origin registry (URL, no credentials) when the
	// registry is a mirror (registry.Server.Origin); every page says so.
	// Default "": not a mirror.
	MirrorOf string
	// Advertise is the registry's HOST:PORT in the copy-ready commands.
	Advertise string
	// ReadOnly hides and refuses deletes and GC. Default false.
	ReadOnly bool
	// Auth, when set, makes the UI ask for the registry's basic-auth
	// credentials (registry.Server.Authenticator: the same failed-login
	// limit). Default: Htpasswd and Realm, when Htpasswd is set.
	Auth *registry.Authenticator
	// Htpasswd, when set and Auth is not, makes the UI check basic-auth
	// credentials against this file. Realm defaults to "labreg".
	Htpasswd, Realm string
	// Hosts are the host names the UI answers to: a request whose Host,
	// or whose Origin when it changes something, names another host is
	// refused (DNS rebinding, cross-site forms). IP addresses and
	// localhost are always accepted. Default: the host of Advertise.
	Hosts []string
	// Version, DataDir and Settings are shown on the status page; settings
	// whose key names a secret are redacted.
	Version  string
	DataDir  string
	Settings []Setting
	// Logger receives errors. Default: discard.
	Logger *slog.Logger
	// InUse, when set, names the manifests swarm services use: GC keeps
	// them, and deleting one needs a confirmation. Default: not asked.
	InUse InUseFunc
	// Swarm, when set, adds the Services page (/services, /api/services):
	// what runs where, deploy another tag, roll back. Default: none.
	Swarm Swarm
}

// UI is the web UI's http.Handler.
type UI struct {
	opts  Options
	mux   *http.ServeMux
	auth  *registry.Authenticator
	hosts map[string]bool
	pages map[string]*pageTemplate
	log   *slog.Logger

	rowsMu sync.Mutex
	rows   map[string]template.HTML

	ops operations

	duMu   sync.Mutex
	duAt   time.Time
	duSize int64
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// New builds the UI.
func New(opts Options) (*UI, error) {
	if opts.Catalog == nil || opts.History == nil {
		return nil, errors.New("ui: Catalog and History are required")
	}
	if opts.Realm == "" {
		opts.Realm = "labreg"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReadOnlyState == nil {
		opts.ReadOnlyState = func() (bool, string) { return false, "" }
	}
	u := &UI{opts: opts, log: opts.Logger, rows: map[string]template.HTML{}, auth: opts.Auth, hosts: map[string]bool{"localhost": true}}
	if u.auth == nil && opts.Htpasswd != "" {
		ac, err := registry.NewAuthenticator(opts.Htpasswd, opts.Realm, registry.AuthLimit{})
		if err != nil {
			return nil, fmt.Errorf("ui: %w", err)
		}
		u.auth = ac
	}
	hosts := opts.Hosts
	if len(hosts) == 0 && opts.Advertise != "" {
		hosts = []string{opts.Advertise}
	}
	for _, h := range hosts {
		u.hosts[hostName(h)] = true
	}
	var err error
	if u.pages, err = parsePages(); err != nil {
		return nil, err
	}
	u.mux = http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	u.mux.Handle("GET /static/", http.StripPrefix("/static/", cacheForever(http.FileServerFS(static))))
	u.mux.HandleFunc("GET /{$}", u.repositories)
	u.mux.HandleFunc("GET /r/{rest...}", u.repoGET)
	u.mux.HandleFunc("POST /r/{rest...}", u.repoPOST)
	u.mux.HandleFunc("GET /events", u.events)
	u.mux.HandleFunc("GET /status", u.status)
	u.mux.HandleFunc("GET /gc", u.gcForm)
	u.mux.HandleFunc("POST /gc", u.gcRun)
	u.mux.HandleFunc("POST /scrub", u.scrubRun)
	u.mux.HandleFunc("GET /services", u.services)
	u.mux.HandleFunc("POST /services/{name}/{action}", u.serviceAction)
	u.mux.HandleFunc("GET /api/services", u.apiServices)
	u.routesAPI()
	return u, nil
}

func cacheForever(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// ServeHTTP checks credentials when htpasswd auth is on, then serves.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "same-origin")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
	if !u.hostAllowed(r.Host) {
		u.refuse(w, r, http.StatusForbidden, fmt.Sprintf("the web UI does not answer to host %q: add it to ui.hosts", hostName(r.Host)))
		return
	}
	if u.auth != nil {
		name, err := u.auth.Check(r)
		if err != nil {
			if errors.Is(err, registry.ErrNoCredentials) || errors.Is(err, registry.ErrBadCredentials) {
				err = fmt.Errorf("%w: use the registry's credentials", err)
			}
			u.auth.Refuse(w, err)
			return
		}
		r = r.WithContext(registry.WithUser(r.Context(), name))
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := u.checkOrigin(r); err != nil {
			u.refuse(w, r, http.StatusForbidden, err.Error())
			return
		}
	}
	u.mux.ServeHTTP(w, r)
}

// refuse answers a refused request: an OCI error body under /api/, text
// for a page.
func (u *UI) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		registry.WriteError(w, status, errcode.ErrorCodeDenied.WithMessage(msg))
		return
	}
	http.Error(w, msg, status)
}

// hostName is the host of HOST[:PORT], lower case, without brackets.
func hostName(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.ToLower(strings.Trim(h, "[]"))
}

// hostAllowed reports whether the UI answers to hostport: one of its
// names, localhost or an IP address (DNS rebinding needs a name).
func (u *UI) hostAllowed(hostport string) bool {
	h := hostName(hostport)
	return u.hosts[h] || net.ParseIP(h) != nil
}

// checkOrigin refuses a request that changes something when its Origin
// is "null" (sandboxed or file: pages) or names a host the UI does not
// answer to. Requests without Origin (curl, older browsers' same-origin
// forms) pass; forms still need their CSRF token.
func (u *UI) checkOrigin(r *http.Request) error {
	o := r.Header.Get("Origin")
	if o == "" {
		return nil
	}
	ou, err := url.Parse(o)
	if o == "null" || err != nil || ou.Host == "" || (ou.Scheme != "http" && ou.Scheme != "https") {
		return fmt.Errorf("request from origin %q refused", o)
	}
	if !u.hostAllowed(ou.Host) || hostName(ou.Host) != hostName(r.Host) {
		return fmt.Errorf("cross-origin request from %s refused", o)
	}
	return nil
}

// user is the authenticated user name; "" when UI auth is off (a Basic
// header the UI did not check names nobody).
func user(r *http.Request) string { return registry.User(r.Context()) }

const csrfCookie = "labreg_csrf"

// csrfToken returns the request's CSRF token (double-submit cookie), setting
// the cookie when it is missing.
func csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 32 {
		return c.Value
	}
	b := make([]byte, 16)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return tok
}

// checkCSRF accepts a form POST whose csrf field matches its cookie (its
// Origin was checked by ServeHTTP).
func checkCSRF(r *http.Request) error {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 32 {
		return errors.New("missing CSRF cookie: reload the page and try again")
	}
	if subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		return errors.New("CSRF token mismatch: reload the page and try again")
	}
	return nil
}

var secretKey = regexp.MustCompile(`(?i)secret|password|passwd|token|credential|private`)

// redact hides secret values and credentials in URLs.
func redact(s Setting) Setting {
	if secretKey.MatchString(s.Key) && s.Value != "" {
		if !strings.Contains(s.Key, "htpasswd") { // a path to the file, not a secret
			return Setting{s.Key, "(redacted)"}
		}
	}
	if u, err := url.Parse(s.Value); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "redacted")
			return Setting{s.Key, u.String()}
		}
	}
	return s
}

// storageMeter is a Catalog that can size its storage (*registry.Catalog).
type storageMeter interface {
	StorageUsed(ctx context.Context) (int64, error)
}

// storageUsed is the size of the registry's storage, measured at most
// once a minute; 0 when the catalog cannot tell.
func (u *UI) storageUsed(ctx context.Context) int64 {
	u.duMu.Lock()
	defer u.duMu.Unlock()
	if time.Since(u.duAt) < time.Minute {
		return u.duSize
	}
	m, ok := u.opts.Catalog.(storageMeter)
	if !ok {
		return 0
	}
	n, err := m.StorageUsed(ctx)
	if err != nil {
		return u.duSize // the last figure until the store answers again
	}
	u.duAt, u.duSize = time.Now(), n
	return n
}
