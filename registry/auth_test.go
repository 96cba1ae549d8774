package registry_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"
)

// htpasswdAt writes an htpasswd file with user:pass at bcrypt cost.
func htpasswdAt(t *testing.T, cost int, user, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), cost)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(f, []byte(user+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestAuthTiming is #10's acceptance 6: with a wrong password, a request
// for a blob that exists and one for a blob that does not take the same
// time (their medians over 50 interleaved requests differ by < 10%), and
// so do a known user with a wrong password and an unknown user. Both pairs
// run one bcrypt comparison at the configured cost and nothing else (the
// credentials are checked before anything looks at storage, an unknown
// user is compared against a hash of the same cost: TestDummyHashCost),
// and a failed check is answered no sooner than a fixed floor after it
// began, which the machine's noise cannot push either side past.
func TestAuthTiming(t *testing.T) {
	// At the lowest cost a failed check takes the Authenticator's floor
	// (100ms), and the test 20s.
	file := htpasswdAt(t, bcrypt.MinCost, "alice", "secret")
	addr, _ := testenv.Registry(t, registry.Options{Htpasswd: file, AuthLimit: registry.AuthLimit{Burst: -1}})
	base := "http://alice:secret@" + addr
	blob := []byte("timed blob")
	biPushBlob(t, base, "timing/repo", blob)
	present := "/v2/timing/repo/blobs/" + digest.FromBytes(blob).String()
	absent := "/v2/timing/repo/blobs/" + digest.FromString("absent").String()

	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
	timeGet := func(user, pass, path string) time.Duration {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+path, nil)
		req.SetBasicAuth(user, pass)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		d := time.Since(start)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET %s as %s/%s: %d, want 401", path, user, pass, resp.StatusCode)
		}
		return d
	}
	compare := func(name string, a, b func() time.Duration) {
		t.Helper()
		a()
		b() // warm up the connections
		var as, bs []time.Duration
		for i := range 50 { // ABBA: neither side always goes first
			if i%2 == 0 {
				as = append(as, a())
				bs = append(bs, b())
			} else {
				bs = append(bs, b())
				as = append(as, a())
			}
		}
		ma, mb := median(as), median(bs)
		diff := float64(ma-mb) / float64(max(ma, mb))
		t.Logf("%s: medians %v vs %v (%.1f%%)", name, ma, mb, 100*diff)
		if diff > 0.10 || diff < -0.10 {
			t.Errorf("%s: medians %v vs %v differ by %.1f%%, want < 10%%", name, ma, mb, 100*diff)
		}
	}
	compare("existing vs absent blob, wrong password",
		func() time.Duration { return timeGet("alice", "wrong", present) },
		func() time.Duration { return timeGet("alice", "wrong", absent) })
	compare("known vs unknown user",
		func() time.Duration { return timeGet("alice", "wrong", present) },
		func() time.Duration { return timeGet("mallory", "wrong", present) })
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestAuthFirst: without valid credentials, no labreg handler answers
// from storage: an existing and an absent blob, a manifest, an upload and
// the sha512 alias paths all get the same 401 with a challenge and an OCI
// error body.
func TestAuthFirst(t *testing.T) {
	file := testenv.Htpasswd(t, "alice", "secret")
	addr, _ := testenv.Registry(t, registry.Options{Htpasswd: file, AuthLimit: registry.AuthLimit{Burst: -1}})
	blob := []byte("first blob")
	biPushBlob(t, "http://alice:secret@"+addr, "first/repo", blob)
	for _, p := range []string{
		"/v2/",
		"/v2/first/repo/blobs/" + digest.FromBytes(blob).String(),
		"/v2/first/repo/blobs/" + digest.FromString("absent").String(),
		"/v2/first/repo/blobs/sha512:" + fmt.Sprintf("%0128x", 1),
		"/v2/first/repo/manifests/latest",
		"/v2/first/repo/referrers/" + digest.FromBytes(blob).String(),
		"/v2/first/repo/blobs/uploads/anything",
	} {
		for _, creds := range []string{"", "alice:wrong@", "bob:secret@"} {
			status, hdr, body := biDo(t, "GET", "http://"+creds+addr+p, nil, false)
			if status != http.StatusUnauthorized || ociCode(body) != "UNAUTHORIZED" || hdr.Get("WWW-Authenticate") != `Basic realm="labreg"` {
				t.Errorf("GET %s as %q: %d %q %s, want 401 UNAUTHORIZED with a challenge", p, creds, status, hdr.Get("WWW-Authenticate"), body)
			}
		}
	}
	if status, _, _ := biDo(t, "GET", "http://"+addr+"/healthz", nil, false); status != http.StatusOK {
		t.Errorf("GET /healthz without credentials: %d, want 200", status)
	}
}

// TestAuthRateLimit: after the burst of failed logins, requests with
// credentials from that address get 429 with Retry-After and an OCI error
// body, the right password included, while another address still logs in.
func TestAuthRateLimit(t *testing.T) {
	file := testenv.Htpasswd(t, "alice", "secret")
	addr, _ := testenv.Registry(t, registry.Options{Htpasswd: file, AuthLimit: registry.AuthLimit{Burst: 3, Interval: time.Hour}})
	from := func(local string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return d.DialContext(ctx, network, a)
		}}}
	}
	get := func(c *http.Client, user, pass string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+"/v2/", nil)
		req.SetBasicAuth(user, pass)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b [512]byte
		n, _ := resp.Body.Read(b[:])
		resp.Header.Set("X-Test-Body", string(b[:n]))
		return resp
	}
	attacker := from("127.0.0.1")
	if r := get(attacker, "alice", "secret"); r.StatusCode != http.StatusOK {
		t.Fatalf("right password: %d", r.StatusCode)
	}
	for i := range 3 {
		if r := get(attacker, "alice", "wrong"); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong password #%d: %d, want 401", i+1, r.StatusCode)
		}
	}
	for _, pass := range []string{"wrong", "secret"} {
		r := get(attacker, "alice", pass)
		secs, _ := strconv.Atoi(r.Header.Get("Retry-After"))
		if r.StatusCode != http.StatusTooManyRequests || secs <= 0 || ociCode([]byte(r.Header.Get("X-Test-Body"))) != "TOOMANYREQUESTS" {
			t.Errorf("password %q after the burst: %d Retry-After %q %s, want 429 TOOMANYREQUESTS with Retry-After",
				pass, r.StatusCode, r.Header.Get("Retry-After"), r.Header.Get("X-Test-Body"))
		}
	}
	if r := get(from("127.0.0.2"), "alice", "secret"); r.StatusCode != http.StatusOK {
		t.Errorf("right password from another address: %d, want 200", r.StatusCode)
	}
}
