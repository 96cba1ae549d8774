package registry

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"golang.org/x/crypto/bcrypt"
)

// Basic auth from an htpasswd (bcrypt) file, checked before anything else
// of a request runs: the registry's middleware (authenticate) answers a
// request without valid credentials before any handler touches storage,
// so a wrong password costs the same whether a blob exists or not. An
// unknown user costs a bcrypt comparison at the cost of the configured
// hashes, like a known one, and every failed check is answered no sooner
// than a fixed time after it began (failFloor), so that what remains of
// the difference (and the machine's noise) does not show. Failed attempts
// are limited per client
// address: after AuthLimit.Burst failures, requests with credentials from
// that address get 429 with Retry-After (no bcrypt run) until one attempt
// per AuthLimit.Interval has been forgiven.
//
// distribution's own htpasswd controller is not used: it compares unknown
// users against a fixed hash of a lower cost and has no limit.

// AuthLimit bounds failed authentication attempts per client address (an
// IPv4 address or an IPv6 /64).
type AuthLimit struct {
	// Burst is how many failures an address may have in a row. Default
	// 10; negative turns the limit off.
	Burst int
	// Interval is how often one failure is forgiven. Default 6s (10 a
	// minute).
	Interval time.Duration
}

// Authentication errors of Authenticator.Check.
var (
	// ErrNoCredentials: the request has no basic-auth credentials.
	ErrNoCredentials = errors.New("authentication required")
	// ErrBadCredentials: unknown user or wrong password.
	ErrBadCredentials = errors.New("invalid user name or password")
)

// TooManyFailuresError is returned by Check for an address over its
// failed-attempt limit.
type TooManyFailuresError struct{ RetryAfter time.Duration }

func (e *TooManyFailuresError) Error() string {
	return fmt.Sprintf("too many failed logins from this address; retry in %s", e.RetryAfter.Round(time.Second))
}

// Authenticator checks basic-auth credentials against an htpasswd file,
// re-read when it changes. The registry and the web UI share one.
type Authenticator struct {
	path, realm string
	limit       *failLimiter

	mu      sync.Mutex
	modTime time.Time
	size    int64
	users   map[string][]byte
	dummy   []byte // a bcrypt hash of a random password at the users' highest cost
	// floor is how long a failed check takes at least: failFloor times
	// what making dummy took (one bcrypt at the users' cost), and at least
	// minFailTime; long enough that a bcrypt run on a busy machine ends
	// before it.
	floor time.Duration
}

const (
	failFloor   = 4
	minFailTime = 100 * time.Millisecond
)

// NewAuthenticator reads the htpasswd file at path (bcrypt hashes only).
// realm defaults to "labreg".
func NewAuthenticator(path, realm string, limit AuthLimit) (*Authenticator, error) {
	if realm == "" {
		realm = "labreg"
	}
	if limit.Burst == 0 {
		limit.Burst = 10
	}
	if limit.Interval <= 0 {
		limit.Interval = 6 * time.Second
	}
	a := &Authenticator{path: path, realm: realm}
	if limit.Burst > 0 {
		a.limit = newFailLimiter(limit.Burst, limit.Interval)
	}
	if _, _, err := a.table(); err != nil {
		return nil, err
	}
	return a, nil
}

// table returns the users and the dummy hash, re-reading the file when
// its modification time or size changed.
func (a *Authenticator) table() (map[string][]byte, []byte, error) {
	fi, err := os.Stat(a.path)
	if err != nil {
		return nil, nil, fmt.Errorf("htpasswd file: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.users != nil && fi.ModTime().Equal(a.modTime) && fi.Size() == a.size {
		return a.users, a.dummy, nil
	}
	b, err := os.ReadFile(a.path)
	if err != nil {
		return nil, nil, fmt.Errorf("htpasswd file: %w", err)
	}
	users, cost, err := parseHtpasswd(b)
	if err != nil {
		return nil, nil, fmt.Errorf("htpasswd file %s: %w", a.path, err)
	}
	if a.dummy == nil || dummyCost(a.dummy) != cost {
		pw := make([]byte, 16)
		rand.Read(pw)
		start := time.Now()
		if a.dummy, err = bcrypt.GenerateFromPassword(pw, cost); err != nil {
			return nil, nil, fmt.Errorf("htpasswd file %s: %w", a.path, err)
		}
		a.floor = max(minFailTime, failFloor*time.Since(start))
	}
	a.users, a.modTime, a.size = users, fi.ModTime(), fi.Size()
	return a.users, a.dummy, nil
}

func dummyCost(h []byte) int {
	c, _ := bcrypt.Cost(h)
	return c
}

// parseHtpasswd reads "user:bcrypt-hash" lines (blank lines and lines
// starting with # skipped) and returns the highest cost among them
// (bcrypt.DefaultCost when there are none).
func parseHtpasswd(b []byte) (map[string][]byte, int, error) {
	users := map[string][]byte{}
	cost := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || t[0] == '#' {
			continue
		}
		u, h, ok := strings.Cut(t, ":")
		if !ok || u == "" {
			return nil, 0, fmt.Errorf("line %d: not user:hash", line)
		}
		c, err := bcrypt.Cost([]byte(h))
		if err != nil {
			return nil, 0, fmt.Errorf("line %d (user %q): not a bcrypt hash (htpasswd -B): %w", line, u, err)
		}
		users[u] = []byte(h)
		cost = max(cost, c)
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	return users, cost, nil
}

// Check returns the name of the user r authenticates as, or
// ErrNoCredentials, ErrBadCredentials, a *TooManyFailuresError, or an
// error reading the htpasswd file.
func (a *Authenticator) Check(r *http.Request) (string, error) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", ErrNoCredentials
	}
	start := time.Now()
	users, dummy, err := a.table()
	if err != nil {
		return "", err
	}
	client := clientKey(r.RemoteAddr)
	if retry, ok := a.limit.take(client); !ok {
		return "", &TooManyFailuresError{RetryAfter: retry}
	}
	hash, known := users[user]
	if !known {
		hash = dummy
	}
	// The same work for an unknown user as for a known one.
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil || !known {
		a.mu.Lock()
		floor := a.floor
		a.mu.Unlock()
		t := time.NewTimer(time.Until(start.Add(floor)))
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
		return "", ErrBadCredentials // the attempt's token stays spent
	}
	a.limit.give(client)
	return user, nil
}

// Challenge sets the WWW-Authenticate header that asks for credentials.
func (a *Authenticator) Challenge(h http.Header) {
	h.Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", a.realm))
}

// Refuse answers a request Check refused: 401 with a challenge, or 429
// with Retry-After, with an OCI error body (a 500 when the htpasswd file
// cannot be read).
func (a *Authenticator) Refuse(w http.ResponseWriter, err error) {
	var tm *TooManyFailuresError
	switch {
	case errors.As(err, &tm):
		secs := int(math.Ceil(tm.RetryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		WriteError(w, http.StatusTooManyRequests, errcode.ErrorCodeTooManyRequests.
			WithMessage(err.Error()).WithDetail(map[string]int{"retry_after_seconds": secs}))
	case errors.Is(err, ErrNoCredentials), errors.Is(err, ErrBadCredentials):
		a.Challenge(w.Header())
		WriteError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage(err.Error()))
	default:
		WriteError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown.
			WithMessage("cannot check credentials: the server's htpasswd file is unreadable"))
	}
}

type userKey struct{}

// WithUser returns ctx carrying the authenticated user name.
func WithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// User returns the authenticated user name carried by ctx, or "" when the
// request was not authenticated (auth off).
func User(ctx context.Context) string {
	u, _ := ctx.Value(userKey{}).(string)
	return u
}

// authenticate checks credentials on every /v2 request before anything
// below it runs; /healthz and /metrics stay open.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if s.auth == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2" && !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
			return
		}
		user, err := s.auth.Check(r)
		if err != nil {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			s.auth.Refuse(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithUser(r.Context(), user)))
	})
}

// clientKey is the address failed attempts are counted by: the IP of
// RemoteAddr, an IPv6 address cut to its /64.
func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// failLimiter is a token bucket per client: an attempt takes a token
// before bcrypt runs (so concurrent attempts cannot exceed the burst), a
// success gives it back, and one token returns per interval.
type failLimiter struct {
	burst    float64
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxClients bounds the limiter's memory; when it is reached, buckets that
// have refilled are dropped, and if none has, all are.
const maxClients = 10000

func newFailLimiter(burst int, interval time.Duration) *failLimiter {
	return &failLimiter{burst: float64(burst), interval: interval, now: time.Now, buckets: map[string]*bucket{}}
}

// take spends one of client's tokens, or reports how long until one is
// back.
func (l *failLimiter) take(client string) (time.Duration, bool) {
	if l == nil {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[client]
	if b == nil {
		if len(l.buckets) >= maxClients {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[client] = b
	}
	l.refill(b, now)
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) * float64(l.interval)), false
	}
	b.tokens--
	return 0, true
}

// give returns the token of a successful attempt.
func (l *failLimiter) give(client string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[client]; b != nil {
		b.tokens = min(l.burst, b.tokens+1)
	}
}

func (l *failLimiter) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)/float64(l.interval))
	}
	b.at = now
}

func (l *failLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if l.refill(b, now); b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= maxClients {
		clear(l.buckets)
	}
}

// Authenticator returns the server's credential check, for the web UI to
// share (one failed-login limit for both); nil when auth is off.
func (s *Server) Authenticator() *Authenticator { return s.auth }
