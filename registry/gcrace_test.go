package registry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// slowStore is a delay of 300–1000 ms per request: a store across a WAN.
func slowStore() time.Duration { return 300*time.Millisecond + rand.N(700*time.Millisecond) }

// proxiedReplica is a replica whose store traffic goes through its own proxy.
type proxiedReplica struct {
	addr  string
	srv   *registry.Server
	proxy *testenv.S3Proxy
}

func startProxied(t *testing.T, store *testenv.S3Store, bucket, secret, redis string, n int, opts testenv.S3ProxyOptions) []proxiedReplica {
	t.Helper()
	var rs []proxiedReplica
	for range n {
		p := testenv.NewS3Proxy(t, store, opts)
		o := s3Replica(t, store, bucket, secret)
		o.Storage = p.URL(bucket)
		o.Redis = redis
		o.GCDrainTimeout = 20 * time.Second
		addr, srv := testenv.Registry(t, o)
		rs = append(rs, proxiedReplica{addr: addr, srv: srv, proxy: p})
	}
	return rs
}

// gcRaceRounds is how many rounds TestGCRaceSlowStore runs:
// $LABREG_GC_SOAK (the soak: 20), else 2.
func gcRaceRounds(t *testing.T) int {
	if s := os.Getenv("LABREG_GC_SOAK"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("LABREG_GC_SOAK=%q: want a count", s)
		}
		return n
	}
	return 2
}

// TestGCRaceSlowStore is issue 18's reproduction: three replicas on one
// bucket, each reaching the store through its own proxy that delays every
// request by 300–1000 ms; pushes go on through every replica while two
// GCs start through different replicas a second or so apart. At most one
// GC runs, and every image whose push was acknowledged pulls whole through
// every replica afterwards. LABREG_GC_SOAK=20 repeats it with 20
// staggers.
func TestGCRaceSlowStore(t *testing.T) {
	t.Parallel() // waits on a slow store or the clock, not on the CPU
	for round := range gcRaceRounds(t) {
		// 0.95 s (the report's), then 0.25 s (the second's lease read
		// reaches the store before the first's write), each a little
		// later every two rounds.
		stagger := []time.Duration{950 * time.Millisecond, 250 * time.Millisecond}[round%2] + time.Duration(round/2)*97*time.Millisecond
		t.Run(fmt.Sprintf("round=%d", round), func(t *testing.T) { gcRace(t, round, stagger) })
	}
}

// gcRace is one round of TestGCRaceSlowStore, on a fresh bucket.
func gcRace(t *testing.T, round int, stagger time.Duration) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("gc-race!", 8))
	rs := startProxied(t, store, bucket, secret, "", 3, testenv.S3ProxyOptions{})
	// Something for the GC to remove: an image pushed and deleted.
	gone, _ := random.Image(512, 1)
	gd := testenv.Push(t, rs[0].addr+"/lab/gone:v1", gone)
	if st, _, body := biDo(t, "DELETE", "http://"+rs[0].addr+"/v2/lab/gone/manifests/"+gd.String(), nil, false); st != http.StatusAccepted {
		t.Fatalf("deleting lab/gone: %d %s", st, body)
	}
	for _, r := range rs {
		r.proxy.SetDelay(slowStore)
	}

	var mu sync.Mutex
	var acked []string // refs whose push was acknowledged
	q, p := round%3, (round+1)%3
	ctx, stop := context.WithCancel(t.Context())
	var pushers sync.WaitGroup
	perPusher := make([]int, len(rs)) // acknowledged pushes, under mu
	for i, r := range rs {
		pushers.Add(1)
		go func() {
			defer pushers.Done()
			for n := 0; ctx.Err() == nil; n++ {
				img, _ := random.Image(256, 1)
				ref := fmt.Sprintf("lab/r%d:p%d", i, n)
				pr, _ := name.ParseReference(r.addr+"/"+ref, name.Insecure)
				if remote.Write(pr, img, remote.WithContext(ctx)) == nil {
					mu.Lock()
					acked = append(acked, ref)
					perPusher[i]++
					mu.Unlock()
				}
			}
		}()
	}
	type outcome struct {
		via int
		err error
	}
	gcs := make(chan outcome, 2)
	go func() {
		_, err := rs[q].srv.GC(t.Context(), registry.GCOptions{})
		gcs <- outcome{q, err}
	}()
	time.Sleep(stagger)
	go func() {
		_, err := rs[p].srv.GC(t.Context(), registry.GCOptions{})
		gcs <- outcome{p, err}
	}()
	ran := 0
	for range 2 {
		o := <-gcs
		var busy *registry.BusyError
		switch {
		case o.err == nil:
			ran++
		case errors.As(o.err, &busy), strings.Contains(o.err.Error(), "gave up"):
			t.Logf("GC through replica %d: %v", o.via, o.err)
		default:
			t.Errorf("GC through replica %d: %v", o.via, o.err)
		}
	}
	if ran > 1 {
		t.Errorf("GCs %s apart: %d ran, want at most 1", stagger, ran)
	}
	// Pushes go on until each replica has acknowledged one more after the
	// GCs (writes reopened).
	mu.Lock()
	after := append([]int(nil), perPusher...)
	mu.Unlock()
	if why := eventually(time.Now().Add(3*time.Minute), func() string {
		mu.Lock()
		defer mu.Unlock()
		for i := range rs {
			if perPusher[i] <= after[i] {
				return fmt.Sprintf("no push acknowledged through replica %d since the GCs", i)
			}
		}
		return ""
	}); why != "" {
		t.Error(why)
	}
	stop()
	pushers.Wait()
	for _, r := range rs {
		r.proxy.SetDelay(nil)
	}
	t.Logf("GCs through %d and %d, %s apart: %d ran; %d pushes acknowledged", q, p, stagger, ran, len(acked))
	for _, ref := range acked {
		for i, r := range rs {
			if err := pullable(t, r.addr+"/"+ref); err != nil {
				t.Errorf("%s, acknowledged, through replica %d: %v", ref, i, err)
			}
		}
	}
}

// TestClusterGCNeedsCompareAndSwap: replicas on a store that ignores
// conditional writes refuse cluster GC, saying why, and remove nothing;
// with registry.redis the lease lives in Redis and GC runs, the other
// replica read-only meanwhile.
func TestClusterGCNeedsCompareAndSwap(t *testing.T) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("no-cas!!", 8))
	blind := testenv.S3ProxyOptions{IgnoreConditions: true}
	rs := startProxied(t, store, bucket, secret, "", 2, blind)
	gone, _ := random.Image(512, 1)
	gd := testenv.Push(t, rs[0].addr+"/lab/gone:v1", gone)
	if st, _, body := biDo(t, "DELETE", "http://"+rs[0].addr+"/v2/lab/gone/manifests/"+gd.String(), nil, false); st != http.StatusAccepted {
		t.Fatalf("deleting lab/gone: %d %s", st, body)
	}
	layers, _ := gone.Layers()
	ld, _ := layers[0].Digest()
	_, err := rs[1].srv.GC(t.Context(), registry.GCOptions{})
	if err == nil || !strings.Contains(err.Error(), "conditional writes") || !strings.Contains(err.Error(), "registry.redis") {
		t.Fatalf("GC on a store without conditional writes: %v; want a refusal naming conditional writes and registry.redis", err)
	}
	if st, _, _ := biDo(t, "HEAD", "http://"+rs[0].addr+"/v2/lab/gone/blobs/"+ld.String(), nil, false); st != http.StatusOK {
		t.Errorf("after the refused GC the deleted image's layer answers %d, want 200 (nothing removed)", st)
	}

	// The same store with Redis: the lease lives there.
	_, bucket2 := testenv.S3(t)
	redis := "redis://" + testenv.Redis(t) + "/6"
	rs = startProxied(t, store, bucket2, secret, redis, 2, blind)
	gd = testenv.Push(t, rs[0].addr+"/lab/gone:v1", gone)
	if st, _, body := biDo(t, "DELETE", "http://"+rs[0].addr+"/v2/lab/gone/manifests/"+gd.String(), nil, false); st != http.StatusAccepted {
		t.Fatalf("deleting lab/gone: %d %s", st, body)
	}
	// A push in flight through replica 0 holds the GC until it drains:
	// meanwhile replica 0 must be read-only for replica 1's GC.
	st, hdr, body := biDo(t, "POST", "http://"+rs[0].addr+"/v2/lab/pushing/blobs/uploads/", nil, false)
	if st != http.StatusAccepted {
		t.Fatalf("starting an upload: %d %s", st, body)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), "PATCH", s3Absolute(rs[0].addr, hdr.Get("Location")), pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	patched := make(chan struct{})
	go func() {
		defer close(patched)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte("in flight"))
	gcErr := make(chan error, 1)
	go func() {
		_, err := rs[1].srv.GC(context.Background(), registry.GCOptions{})
		gcErr <- err
	}()
	if why := eventually(time.Now().Add(20*time.Second), func() string {
		if ro, reason := rs[0].srv.ReadOnlyState(); !ro || !strings.Contains(reason, "garbage collection on replica") {
			return fmt.Sprintf("read-only %v (%q)", ro, reason)
		}
		return ""
	}); why != "" {
		t.Errorf("replica 0 while replica 1 runs GC with the lease in Redis: %s", why)
	}
	pw.Close()
	<-patched
	if err := <-gcErr; err != nil {
		t.Fatalf("GC with the lease in Redis: %v", err)
	}
	if st, _, _ := biDo(t, "HEAD", "http://"+rs[0].addr+"/v2/lab/gone/blobs/"+ld.String(), nil, false); st != http.StatusNotFound {
		t.Errorf("after GC the deleted image's layer answers %d, want 404", st)
	}
}

// TestGCHolderKilled: a `labreg serve` replica whose store requests take
// 300–1000 ms is killed with SIGKILL in the middle of its GC. The other
// replica, read-only for that GC, stays so while the dead holder's lease
// could still be valid and reopens once it has expired (a TTL after the
// last renewal it saw); then a GC through it runs, and what was kept pulls
// whole.
func TestGCHolderKilled(t *testing.T) {
	t.Parallel() // waits on a slow store or the clock, not on the CPU
	store, bucket := testenv.S3(t)
	access, secretKey := store.KeyFiles(t)
	secret := writeSecret(t, strings.Repeat("killgc!!", 8))
	proxyA := testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uiAddr := ln.Addr().String()
	ln.Close()
	a := testenv.Serve(t, "", "--storage", proxyA.URL(bucket), "--s3-access-key-file", access,
		"--s3-secret-key-file", secretKey, "--http-secret-file", secret, "--ui-listen", uiAddr)
	addrB, srvB := testenv.Registry(t, s3Replica(t, store, bucket, secret))

	keep, _ := random.Image(1<<10, 2)
	testenv.Push(t, addrB+"/lab/keep:v1", keep)
	gone, _ := random.Image(1<<10, 1)
	gd := testenv.Push(t, addrB+"/lab/gone:v1", gone)
	if st, _, body := biDo(t, "DELETE", "http://"+addrB+"/v2/lab/gone/manifests/"+gd.String(), nil, false); st != http.StatusAccepted {
		t.Fatalf("deleting lab/gone: %d %s", st, body)
	}
	proxyA.SetDelay(slowStore)
	go func() { // answered or cut by the kill: either way not waited for
		req, _ := http.NewRequest("POST", "http://"+uiAddr+"/api/gc", strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if why := eventually(time.Now().Add(30*time.Second), func() string {
		if ro, reason := srvB.ReadOnlyState(); !ro || !strings.Contains(reason, "garbage collection on replica") {
			return fmt.Sprintf("read-only %v (%q)", ro, reason)
		}
		return ""
	}); why != "" {
		t.Fatalf("B while A runs GC: %s", why)
	}
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// A dead holder's lease lasts at most a TTL (30 s) after the last
	// renewal B saw; B polls it every second.
	if why := eventually(killed.Add(40*time.Second), func() string {
		if ro, reason := srvB.ReadOnlyState(); ro {
			return "still read-only: " + reason
		}
		return ""
	}); why != "" {
		t.Fatalf("B %s after A died holding the lease: %s", time.Since(killed).Round(time.Second), why)
	}
	t.Logf("B reopened %s after A was killed", time.Since(killed).Round(100*time.Millisecond))
	res, err := srvB.GC(t.Context(), registry.GCOptions{})
	if err != nil {
		t.Fatalf("GC through B after A died: %v", err)
	}
	if len(res.Blobs) == 0 {
		t.Errorf("GC through B removed nothing; want the deleted image's blobs")
	}
	if err := pullable(t, addrB+"/lab/keep:v1"); err != nil {
		t.Errorf("lab/keep:v1 after both GCs: %v", err)
	}
}

// TestGCStoppedPartwayForgetsBlobs: a GC whose sweep fails part-way (the
// store refuses the third delete, as a lost lease's fence would stop it)
// has removed some blobs: they leave the Redis descriptor cache all the
// same, so the same image pushed again uploads them and pulls whole.
func TestGCStoppedPartwayForgetsBlobs(t *testing.T) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("partway!", 8))
	rs := startProxied(t, store, bucket, secret, "redis://"+testenv.Redis(t)+"/7", 1, testenv.S3ProxyOptions{})
	img, _ := random.Image(256, 4)
	ref := rs[0].addr + "/lab/x:v1"
	d := testenv.Push(t, ref, img)
	if err := pullable(t, ref); err != nil { // every descriptor cached
		t.Fatal(err)
	}
	if st, _, body := biDo(t, "DELETE", "http://"+rs[0].addr+"/v2/lab/x/manifests/"+d.String(), nil, false); st != http.StatusAccepted {
		t.Fatalf("delete: %d %s", st, body)
	}
	var deletes sync.Mutex
	n := 0
	rs[0].proxy.SetAnswer(func(r *http.Request) int {
		deletes.Lock()
		defer deletes.Unlock()
		if r.Method == http.MethodPost && r.URL.Query().Has("delete") {
			if n++; n > 2 {
				return http.StatusForbidden
			}
		}
		return 0
	})
	_, err := rs[0].srv.GC(t.Context(), registry.GCOptions{})
	rs[0].proxy.SetAnswer(nil)
	if err == nil || n <= 2 {
		t.Fatalf("GC with the store refusing deletes after two: %v after %d deletes; want a failure part-way", err, n)
	}
	testenv.Push(t, ref, img)
	if err := pullable(t, ref); err != nil {
		t.Errorf("the image pushed again (acknowledged) after a GC stopped part-way: %v", err)
	}
}
