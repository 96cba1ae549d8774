package registry_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// idleReplica is one replica with its own counting proxy to the bucket.
type idleReplica struct {
	addr  string
	srv   *registry.Server
	proxy *testenv.S3Proxy
	since time.Time // when its counts were last reset
}

// TestIdleReplicaCost is #18's acceptance 3: an idle replica costs at
// most $2 a month in store requests at S3 standard prices, measured over
// 60 s by a counting proxy per replica, alone and as one of three on one
// bucket (the two run side by side); an idle replica LISTs at most once a
// minute (the journal's prune, every 10 min); and among three idle
// replicas an image pushed through A still shows through B within 2 s.
func TestIdleReplicaCost(t *testing.T) {
	t.Parallel() // waits on a slow store or the clock, not on the CPU
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d replicas", n), func(t *testing.T) {
			t.Parallel()
			store, bucket := testenv.S3(t)
			secret := writeSecret(t, strings.Repeat("idle!idl", 8))
			rs := make([]*idleReplica, n)
			for i := range rs {
				r := &idleReplica{proxy: testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{})}
				opts := s3Replica(t, store, bucket, secret)
				opts.Storage = r.proxy.URL(bucket)
				r.addr, r.srv = testenv.Registry(t, opts)
				rs[i] = r
			}
			settle(t, rs)
			measureIdle(t, rs)
			if n > 1 {
				visibleThroughB(t, rs[0], rs[1])
			}
		})
	}
}

// settle waits until the replicas have started: a replica that starts
// writes its heartbeat, probes the store's conditional writes and reads
// the whole journal; then it only polls. Settled is two seconds in a row
// in which no replica wrote anything; each replica's counts start then.
func settle(t *testing.T, rs []*idleReplica) {
	t.Helper()
	const most = 20 * time.Second
	start, quiet := time.Now(), 0
	var wrote []string
	for quiet < 2 {
		if time.Since(start) > most {
			t.Fatalf("the replicas still write to the store %s after they started; in the last second: %s", most, strings.Join(wrote, "; "))
		}
		time.Sleep(time.Second)
		quiet++
		wrote = wrote[:0]
		for i, r := range rs {
			c := r.proxy.Counts()
			r.since = time.Now()
			if c["PUT"]+c["POST"]+c["DELETE"] > 0 {
				quiet = 0
				wrote = append(wrote, fmt.Sprintf("replica %d: %s", i+1, kinds(c)))
			}
		}
	}
	t.Logf("settled %s after the replicas started", time.Since(start).Round(time.Second))
}

// measureIdle counts each replica's store requests for a minute of doing
// nothing and prices them for a month.
func measureIdle(t *testing.T, rs []*idleReplica) {
	t.Helper()
	const (
		idle       = 60 * time.Second
		month      = 30 * 24 * time.Hour
		maxMonthly = 2.0 // dollars per replica-month
	)
	time.Sleep(idle)
	for i, r := range rs {
		c, took := r.proxy.Counts(), time.Since(r.since)
		monthly := testenv.S3Cost(c) * float64(month) / float64(took)
		t.Logf("replica %d of %d, idle for %s: %s, $%.2f a replica-month", i+1, len(rs), took.Round(time.Millisecond), kinds(c), monthly)
		if monthly > maxMonthly {
			t.Errorf("replica %d of %d: $%.2f a month in store requests while idle (%s in %s), want at most $%.2f",
				i+1, len(rs), monthly, kinds(c), took.Round(time.Millisecond), maxMonthly)
		}
		if c["LIST"] > 1 {
			t.Errorf("replica %d of %d: %d LISTs in %s while idle, want at most 1 (the journal's prune)",
				i+1, len(rs), c["LIST"], took.Round(time.Millisecond))
		}
	}
}

// kinds is counts by kind in a fixed order, every kind named.
func kinds(c map[string]int) string {
	var b strings.Builder
	for _, k := range []string{"LIST", "GET", "HEAD", "PUT", "POST", "DELETE"} {
		fmt.Fprintf(&b, "%s %d ", k, c[k])
	}
	return strings.TrimSpace(b.String())
}

// visibleThroughB pushes an image through A and asserts that B lists the
// repository in /v2/_catalog and in its catalog index (which only A's
// journal entry tells B about) and serves the manifest, each within 2 s
// of the push returning. A check that misses the bound is followed for up
// to 10 s more to say how long it did take.
func visibleThroughB(t *testing.T, a, b *idleReplica) {
	t.Helper()
	const (
		repo  = "idle/app"
		bound = 2 * time.Second
	)
	index := func() []string {
		repos, err := b.srv.Catalog().Repositories(t.Context())
		if err != nil {
			t.Fatalf("B's catalog index: %v", err)
		}
		var names []string
		for _, r := range repos {
			names = append(names, r.Name)
		}
		return names
	}
	if got := index(); len(got) != 0 { // built at B's start: B must follow A
		t.Fatalf("B's catalog index lists %v before any push", got)
	}
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := testenv.Push(t, a.addr+"/"+repo+":v1", img)
	pushed := time.Now()

	ref, err := name.ParseReference(b.addr+"/"+repo+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what  string
		check func() string
	}{
		{"/v2/_catalog of B", func() string {
			if got := testenv.Catalog(t, b.addr); !slices.Contains(got, repo) {
				return fmt.Sprintf("lists %v", got)
			}
			return ""
		}},
		{"B's catalog index", func() string {
			if got := index(); !slices.Contains(got, repo) {
				return fmt.Sprintf("lists %v", got)
			}
			return ""
		}},
		{"the manifest through B", func() string {
			desc, err := remote.Get(ref, remote.WithContext(t.Context()))
			switch {
			case err != nil:
				return err.Error()
			case desc.Digest != want:
				return fmt.Sprintf("digest %s, pushed %s", desc.Digest, want)
			}
			return ""
		}},
	}
	// Every check is polled every 20 ms until it passes, so that each
	// one's time is its own.
	seen := make([]time.Duration, len(checks))
	why := make([]string, len(checks))
	eventually(pushed.Add(bound+10*time.Second), func() string {
		left := 0
		for i, c := range checks {
			if seen[i] != 0 {
				continue
			}
			if why[i] = c.check(); why[i] == "" {
				seen[i] = time.Since(pushed)
			} else {
				left++
			}
		}
		if left > 0 {
			return "not yet"
		}
		return ""
	})
	for i, c := range checks {
		switch {
		case seen[i] == 0:
			t.Errorf("%s: the push through A did not show %s after it returned: %s", c.what, bound+10*time.Second, why[i])
		case seen[i] > bound:
			t.Errorf("%s: the push through A showed %s after it returned, want within %s", c.what, seen[i].Round(time.Millisecond), bound)
		default:
			t.Logf("%s: the push through A showed %s after it returned", c.what, seen[i].Round(time.Millisecond))
		}
	}
}

// TestS3HealthWhenStoreSilent: with distribution's storage check off on
// S3 (a LIST every 10 s), /healthz still says when the store stops
// answering (the change signal's polls fail for 30 s), and recovers.
func TestS3HealthWhenStoreSilent(t *testing.T) {
	t.Parallel() // waits on a slow store or the clock, not on the CPU
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("healthz!", 8))
	rs := startProxied(t, store, bucket, secret, "", 1, testenv.S3ProxyOptions{})
	health := func() (int, string) {
		st, _, body := biDo(t, "GET", "http://"+rs[0].addr+"/healthz", nil, false)
		return st, string(body)
	}
	if st, body := health(); st != http.StatusOK {
		t.Fatalf("/healthz with the store answering: %d %s", st, body)
	}
	rs[0].proxy.SetAnswer(func(*http.Request) int { return http.StatusServiceUnavailable })
	silent := time.Now()
	if why := eventually(silent.Add(45*time.Second), func() string {
		if st, body := health(); st != http.StatusServiceUnavailable || !strings.Contains(body, "storagedriver_s3") || !strings.Contains(body, "has not answered") {
			return fmt.Sprintf("%d %s", st, body)
		}
		return ""
	}); why != "" {
		t.Fatalf("/healthz %s after the store stopped answering: %s; want 503 naming storagedriver_s3", time.Since(silent).Round(time.Second), why)
	}
	rs[0].proxy.SetAnswer(nil)
	if why := eventually(time.Now().Add(10*time.Second), func() string {
		if st, body := health(); st != http.StatusOK {
			return fmt.Sprintf("%d %s", st, body)
		}
		return ""
	}); why != "" {
		t.Errorf("/healthz once the store answers again: %s", why)
	}
}
