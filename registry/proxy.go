package registry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
)

// A mirror is a registry with Options.ProxyRemoteURL: distribution's
// pull-through cache of an origin registry (a zone mirror in front of a
// private labreg). mirror adds what a pull storm needs on top of it:
//
//   - Concurrent requests for one blob or manifest by digest are coalesced
//     into one origin fetch: the first request fetches (distribution
//     streams it to its client while storing it); the others wait until it
//     is stored and are then served from the mirror's own storage. If the
//     first fetch fails (origin error, client gone: distribution then
//     stores nothing), the next waiting request fetches again. Without
//     this, distribution fetches once per concurrent request until the blob
//     is stored (664 origin GETs for 4 blobs with 300 pulling nodes).
//   - A HEAD for something not cached yet is fetched as a GET (its body
//     discarded by net/http), so that it is stored too.
//   - Tags are re-checked against the origin on every lookup: a tag is
//     resolved there to its digest and then served by digest. While the
//     origin is unreachable a tag lookup answers 503 UNAVAILABLE naming the
//     origin; manifests by digest and blobs already cached are still
//     served from storage.
//
// Digests are cached for good (distribution's proxy TTL is off). A blob
// the mirror has cached is served by the blob fast path from its file
// (fastpath.go), the way a registry's own blobs are; only a fetch goes
// through distribution, which streams the origin's reply to the client
// and to storage at once (a copy through user space: the bytes arrive as
// an HTTP body).
type mirror struct {
	origin     *url.URL
	user, pass string
	client     *http.Client
	next       http.Handler

	mu       sync.Mutex
	inflight map[string]*flight
	stored   sync.Map // keys fetched and stored: no need to coalesce
}

// mirrorConfig is a mirror's origin and the credentials for it.
type mirrorConfig struct {
	origin     *url.URL
	user, pass string
}

// newMirrorConfig checks Options.ProxyRemoteURL and reads
// ProxyCredentialsFile; nil when the server is no mirror.
func newMirrorConfig(opts Options) (*mirrorConfig, error) {
	if opts.ProxyRemoteURL == "" {
		if opts.ProxyCredentialsFile != "" {
			return nil, fmt.Errorf("proxy credentials file: set, but registry.proxy_remote_url is not (no mirror)")
		}
		return nil, nil
	}
	u, err := url.Parse(opts.ProxyRemoteURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("proxy remote URL %q: want http://HOST[:PORT] or https://HOST[:PORT]", redactURL(opts.ProxyRemoteURL))
	}
	mc := &mirrorConfig{origin: u}
	if u.User != nil {
		mc.user = u.User.Username()
		mc.pass, _ = u.User.Password()
		u.User = nil
	}
	if opts.ProxyCredentialsFile != "" {
		if mc.user, mc.pass, err = parseProxyCredentials(opts.ProxyCredentialsFile); err != nil {
			return nil, err
		}
	}
	return mc, nil
}

func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(unparsable)"
}

// apply makes distribution's proxy fetch from the origin with the
// credentials and keep what it fetched for good (TTL 0).
func (mc *mirrorConfig) apply(cfg *configuration.Configuration) {
	if mc == nil {
		return
	}
	cfg.Proxy.RemoteURL = mc.origin.String()
	cfg.Proxy.Username, cfg.Proxy.Password = mc.user, mc.pass
	forever := time.Duration(0)
	cfg.Proxy.TTL = &forever
}

// Origin is the registry this server mirrors (Options.ProxyRemoteURL,
// without credentials); "" when it is no mirror.
func (s *Server) Origin() string {
	if s.mirrorCfg == nil {
		return ""
	}
	return s.mirrorCfg.origin.Redacted()
}

// flight is one fetch of a blob or manifest from the origin; done is
// closed when it ended, ok says whether it was stored.
type flight struct {
	done chan struct{}
	ok   bool
}

var mirrorPath = regexp.MustCompile(`^/v2/(.+)/(blobs|manifests)/([^/]+)$`)

// mirror wraps next (distribution's app) when the server is a mirror, and
// returns it unchanged otherwise.
func (s *Server) mirror(next http.Handler) http.Handler {
	mc := s.mirrorCfg
	if mc == nil {
		return next
	}
	return &mirror{origin: mc.origin, user: mc.user, pass: mc.pass, next: next, inflight: map[string]*flight{},
		client: &http.Client{Timeout: 30 * time.Second}}
}

// parseProxyCredentials reads the origin's credentials, USER:PASSWORD on
// the first line of file. The password never appears in an error.
func parseProxyCredentials(file string) (user, pass string, err error) {
	s, err := readSecretFile("proxy credentials file", file)
	if err != nil {
		return "", "", err
	}
	line, _, _ := strings.Cut(s, "\n")
	user, pass, ok := strings.Cut(strings.TrimSpace(line), ":")
	if !ok || user == "" {
		return "", "", fmt.Errorf("proxy credentials file %s: want USER:PASSWORD on its first line", file)
	}
	return user, pass, nil
}

func (m *mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sm := mirrorPath.FindStringSubmatch(r.URL.Path)
	if sm == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		m.next.ServeHTTP(w, r)
		return
	}
	name, kind, ref := sm[1], sm[2], sm[3]
	if _, err := digest.Parse(ref); err != nil {
		if kind == "blobs" {
			m.next.ServeHTTP(w, r) // distribution answers DIGEST_INVALID
			return
		}
		dgst, status, err := m.resolveTag(r.Context(), r, name, ref)
		switch {
		case err != nil:
			WriteError(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage(
				fmt.Sprintf("this mirror cannot look up tag %s:%s at its origin %s: %v", name, ref, m.origin.Redacted(), err)))
			return
		case status != http.StatusOK:
			m.next.ServeHTTP(w, r) // not there, or not allowed: distribution says which
			return
		}
		r = r.Clone(r.Context())
		r.URL.Path = "/v2/" + name + "/manifests/" + dgst.String()
		r.URL.RawPath = ""
	}
	m.coalesce(w, r, name+"/"+kind+"/"+r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
}

// coalesce serves r so that one request at a time fetches key from the
// origin; the others wait for it and are then served from storage.
func (m *mirror) coalesce(w http.ResponseWriter, r *http.Request, key string) {
	if _, ok := m.stored.Load(key); ok {
		m.next.ServeHTTP(w, r)
		return
	}
	for {
		m.mu.Lock()
		f, busy := m.inflight[key]
		if !busy {
			f = &flight{done: make(chan struct{})}
			m.inflight[key] = f
			m.mu.Unlock()
			f.ok = m.lead(w, r)
			if f.ok {
				m.stored.Store(key, true)
			}
			m.mu.Lock()
			delete(m.inflight, key)
			close(f.done)
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		select {
		case <-f.done:
		case <-r.Context().Done():
			return
		}
		if f.ok {
			m.next.ServeHTTP(w, r) // stored now: served from storage
			return
		}
		// the fetch failed and stored nothing: fetch again (one of the
		// waiting requests leads)
	}
}

// lead serves r as the request that may fetch from the origin, and says
// whether the content is stored now: distribution answered 200 and, for a
// GET, sent the whole body (it stores what it fetched once it was sent).
func (m *mirror) lead(w http.ResponseWriter, r *http.Request) bool {
	// distribution's proxy keeps one process-wide set of blobs being
	// fetched: a second fetch of a digest while one runs (another
	// repository, another mirror in the same process) streams from the
	// origin without storing. One fetch of a digest at a time avoids it.
	slot := &fetchSlots[fetchSlot(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])]
	slot.Lock()
	defer slot.Unlock()
	if r.Method == http.MethodHead {
		// fetched as a GET so that it is stored; net/http discards the
		// body of a reply to a HEAD request
		r = r.Clone(r.Context())
		r.Method = http.MethodGet
	}
	rec := &statusWriter{ResponseWriter: w} // routes.go: status and bytes written
	m.next.ServeHTTP(rec, r)
	if rec.status != http.StatusOK && rec.status != 0 {
		return false
	}
	if n, err := strconv.ParseInt(rec.Header().Get("Content-Length"), 10, 64); err == nil && n != rec.bytes {
		return false
	}
	return r.Context().Err() == nil || rec.bytes > 0
}

// fetchSlots serialize the fetches of one digest in the process (lead).
var fetchSlots [64]sync.Mutex

func fetchSlot(dgst string) int {
	h := fnv.New32a()
	h.Write([]byte(dgst))
	return int(h.Sum32() % uint32(len(fetchSlots)))
}

// resolveTag asks the origin which digest tag names now (a HEAD with the
// client's Accept header). err is set when the origin cannot be reached
// or fails (5xx); status is the origin's answer otherwise.
func (m *mirror) resolveTag(ctx context.Context, in *http.Request, name, tag string) (digest.Digest, int, error) {
	u := *m.origin
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v2/" + name + "/manifests/" + tag
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.String(), nil)
	if err != nil {
		return "", 0, err
	}
	for _, a := range in.Header.Values("Accept") {
		req.Header.Add("Accept", a)
	}
	if m.user != "" {
		req.SetBasicAuth(m.user, m.pass)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err // the URL is named by the caller, without credentials
		}
		return "", 0, err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return "", 0, fmt.Errorf("it answered %s", resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode, nil
	}
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", 0, fmt.Errorf("its answer has no valid Docker-Content-Digest")
	}
	return d, http.StatusOK, nil
}
