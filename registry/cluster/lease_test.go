package cluster_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry/cluster"
)

// s3CAS is bucket on store, reached through endpoint (the store's own or
// a proxy's).
func s3CAS(t *testing.T, store *testenv.S3Store, bucket, endpoint string) *cluster.S3 {
	t.Helper()
	c, err := cluster.NewS3(cluster.S3Config{Bucket: bucket, Region: store.Region, Endpoint: endpoint,
		Prefix: "/lease-test", AccessKey: store.AccessKey, Secret: store.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func redisCAS(t *testing.T) *cluster.Redis {
	t.Helper()
	addr := testenv.Redis(t)
	c := goredis.NewClient(&goredis.Options{Addr: addr, DB: 5})
	t.Cleanup(func() { c.FlushDB(context.Background()); c.Close() })
	return cluster.NewRedis(c, addr)
}

// TestProbe: versitygw and Redis honour conditional writes; the same
// store behind a proxy that drops the conditions is caught.
func TestProbe(t *testing.T) {
	store, bucket := testenv.S3(t)
	ctx := t.Context()
	if err := cluster.Probe(ctx, s3CAS(t, store, bucket, store.Endpoint), "/labreg/cluster"); err != nil {
		t.Errorf("versitygw: %v", err)
	}
	if err := cluster.Probe(ctx, redisCAS(t), "labreg/cluster"); err != nil {
		t.Errorf("redis: %v", err)
	}
	blind := testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{IgnoreConditions: true})
	err := cluster.Probe(ctx, s3CAS(t, store, bucket, blind.Endpoint), "/labreg/cluster")
	if !errors.Is(err, cluster.ErrNoConditionalWrites) {
		t.Errorf("a store that ignores conditions: %v, want ErrNoConditionalWrites", err)
	}
}

// TestLeaseRace: replicas whose requests each take 300–1000 ms (a store
// across a WAN) try to take one lease at staggered moments; exactly one
// holds it, and after it releases exactly one of a second round does.
// The read-sleep-reread lease this replaces let two win.
func TestLeaseRace(t *testing.T) {
	store, bucket := testenv.S3(t)
	cases := map[string]func(t *testing.T) []cluster.CAS{
		"s3": func(t *testing.T) []cluster.CAS {
			var cs []cluster.CAS
			for range 4 {
				p := testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{Delay: func() time.Duration {
					return 300*time.Millisecond + rand.N(700*time.Millisecond)
				}})
				cs = append(cs, s3CAS(t, store, bucket, p.Endpoint))
			}
			return cs
		},
		"redis": func(t *testing.T) []cluster.CAS {
			c := redisCAS(t)
			return []cluster.CAS{c, c, c, c}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			cs := mk(t)
			for round := range 2 {
				var mu sync.Mutex
				var won []*cluster.Held
				var wg sync.WaitGroup
				for i, c := range cs {
					l := cluster.NewLease(c, "/labreg/gc/lease", "replica-"+string(rune('a'+i)), 30*time.Second)
					wg.Add(1)
					go func() {
						defer wg.Done()
						time.Sleep(time.Duration(i) * 150 * time.Millisecond)
						h, err := l.Acquire(t.Context())
						var held *cluster.HeldError
						switch {
						case err == nil:
							mu.Lock()
							won = append(won, h)
							mu.Unlock()
						case !errors.As(err, &held):
							t.Errorf("round %d, replica %d: %v", round, i, err)
						}
					}()
				}
				wg.Wait()
				if len(won) != 1 {
					t.Fatalf("round %d: %d replicas hold the lease, want 1", round, len(won))
				}
				if err := won[0].Verify(t.Context()); err != nil {
					t.Errorf("round %d: the winner's lease: %v", round, err)
				}
				if err := won[0].Release(t.Context()); err != nil {
					t.Errorf("round %d: release: %v", round, err)
				}
			}
		})
	}
}

// TestLeaseLifecycle on versitygw: renewal keeps a lease; an observer
// counts a lease nobody renews as expired only a TTL after it first saw
// it (by its own clock) and may then take it over; the old holder's
// renewal and Verify then fail (fenced), its Release leaves the new
// holder's lease alone, and the epoch only grows.
func TestLeaseLifecycle(t *testing.T) {
	store, bucket := testenv.S3(t)
	cas := s3CAS(t, store, bucket, store.Endpoint)
	ctx := t.Context()
	const ttl = 3 * time.Second
	a := cluster.NewLease(cas, "/labreg/gc/lease", "a", ttl)
	b := cluster.NewLease(cas, "/labreg/gc/lease", "b", ttl)
	ha, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ha.Renew(ctx); err != nil {
		t.Fatalf("renewing: %v", err)
	}
	v, err := b.Observe(ctx)
	if err != nil || !v.Held || v.Mine || v.State.Holder != "a" {
		t.Fatalf("b sees %+v, %v; want held by a, not its own", v, err)
	}
	if va, _ := a.Observe(ctx); !va.Mine {
		t.Errorf("a does not see its own lease as its own: %+v", va)
	}
	var held *cluster.HeldError
	if _, err := b.Acquire(ctx); !errors.As(err, &held) || held.Holder != "a" {
		t.Fatalf("b acquiring a held lease: %v, want HeldError naming a", err)
	}
	// a stops renewing (a paused or dead holder). Within its own window it
	// may act; b may not take over before a TTL of seeing the same version.
	time.Sleep(ttl / 2)
	if _, err := b.Acquire(ctx); !errors.As(err, &held) {
		t.Fatalf("b, half a TTL after a's last renewal: %v, want HeldError", err)
	}
	time.Sleep(ttl/2 + 200*time.Millisecond)
	if err := ha.Check(); !errors.Is(err, cluster.ErrLost) {
		t.Errorf("a's own check a TTL after its renewal: %v, want ErrLost", err)
	}
	hb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b, a TTL after the last renewal it saw: %v", err)
	}
	if hb.Epoch() <= ha.Epoch() {
		t.Errorf("epochs: a %d, b %d; want b's greater", ha.Epoch(), hb.Epoch())
	}
	if err := ha.Renew(ctx); !errors.Is(err, cluster.ErrLost) {
		t.Errorf("a renewing after b took over: %v, want ErrLost", err)
	}
	if err := ha.Release(ctx); err != nil {
		t.Errorf("a releasing a lost lease: %v", err)
	}
	if err := hb.Verify(ctx); err != nil {
		t.Errorf("b's lease after a's release: %v (a's release must not touch it)", err)
	}
	if err := hb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	v, _ = a.Observe(ctx)
	if v.Held || v.State.Epoch != hb.Epoch() {
		t.Errorf("after b's release: %+v; want free, epoch %d kept", v, hb.Epoch())
	}
	hc, err := a.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquiring a released lease: %v", err)
	}
	if hc.Epoch() != hb.Epoch()+1 {
		t.Errorf("epoch after release: %d, want %d", hc.Epoch(), hb.Epoch()+1)
	}
	hc.Release(ctx)
}

// TestKeepRenewsThroughSlowStore: with every request taking up to a
// second, Keep holds an 8 s lease for 16 s; an observer never sees it free.
func TestKeepRenewsThroughSlowStore(t *testing.T) {
	store, bucket := testenv.S3(t)
	p := testenv.NewS3Proxy(t, store, testenv.S3ProxyOptions{Delay: func() time.Duration {
		return 300*time.Millisecond + rand.N(700*time.Millisecond)
	}})
	cas := s3CAS(t, store, bucket, p.Endpoint)
	direct := s3CAS(t, store, bucket, store.Endpoint)
	const ttl = 8 * time.Second
	h, err := cluster.NewLease(cas, "/k", "a", ttl).Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	lost := make(chan error, 1)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		h.Keep(ctx, func(err error) { lost <- err })
	}()
	obs := cluster.NewLease(direct, "/k", "b", ttl)
	for end := time.Now().Add(2 * ttl); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if v, err := obs.Observe(t.Context()); err != nil || !v.Held {
			t.Fatalf("observer sees %+v, %v while Keep renews", v, err)
		}
		select {
		case err := <-lost:
			t.Fatalf("Keep lost the lease: %v", err)
		default:
		}
	}
	stop()
	<-kept
	if err := h.Verify(t.Context()); err != nil {
		t.Errorf("after 2 TTLs of Keep: %v", err)
	}
}
