package registry_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// Caches that never lie (issue 18): with registry.redis, every path that
// removes a blob or a manifest (scrub --repair, online and offline GC, a
// UI delete) drops what distribution's Redis descriptor cache holds of it
// before the removal is reported done. Otherwise HEAD answers 200, GET
// 200 with no bytes, and a push skips the missing blob and gets 201: the
// image stays broken while every client is told it is fine.

// ask sends method to url and returns the status and the body's length.
func ask(t *testing.T, method, url string) (int, int) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, len(b)
}

// uploadCounter counts the blob uploads a client starts.
type uploadCounter struct {
	n atomic.Int32
}

func (c *uploadCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") {
		c.n.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// pushLikeDocker pushes img to ref the way docker push does, and returns
// how many blobs it uploaded: each blob (config, layers) is checked with
// HEAD and uploaded when the registry says it is missing; then the
// manifest is PUT. (go-containerregistry's Write skips an image whose
// manifest exists, so it would never re-upload a lost layer.)
func pushLikeDocker(t *testing.T, ref string, img v1.Image) int {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	uc := &uploadCounter{}
	tr := remote.WithTransport(uc)
	cl, err := partial.ConfigLayer(img)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range append(ls, cl) {
		if err := remote.WriteLayer(r.Context(), l, tr); err != nil {
			t.Fatalf("pushing a blob of %s: %v", ref, err)
		}
	}
	if err := remote.Put(r, img, tr); err != nil {
		t.Fatalf("pushing the manifest of %s: %v", ref, err)
	}
	return int(uc.n.Load())
}

// cacheBlobs GETs every blob of img in repo, so that distribution's
// descriptor cache holds them.
func cacheBlobs(t *testing.T, addr, repo string, img v1.Image) {
	t.Helper()
	m, _ := img.Manifest()
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if st, n := ask(t, "GET", "http://"+addr+"/v2/"+repo+"/blobs/"+d.Digest.String()); st != 200 || int64(n) != d.Size {
			t.Fatalf("GET %s: %d with %d bytes", d.Digest, st, n)
		}
	}
}

// corruptLayer flips a byte of img's first layer in the data dir and
// returns the layer's digest.
func corruptLayer(t *testing.T, dir string, img v1.Image) v1.Hash {
	t.Helper()
	m, _ := img.Manifest()
	l := m.Layers[0].Digest
	p := filepath.Join(dir, "storage/docker/registry/v2/blobs/sha256", l.Hex[:2], l.Hex, "data")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return l
}

// wantMissing checks that the registry says blob d of repo is not there.
func wantMissing(t *testing.T, addr, repo string, d v1.Hash) {
	t.Helper()
	u := "http://" + addr + "/v2/" + repo + "/blobs/" + d.String()
	if st, _ := ask(t, "HEAD", u); st != 404 {
		t.Errorf("HEAD of the removed blob %s: %d, want 404", d, st)
	}
	if st, n := ask(t, "GET", u); st != 404 {
		t.Errorf("GET of the removed blob %s: %d with %d bytes, want 404", d, st, n)
	}
}

// TestRedisScrubRepair: a blob scrub --repair quarantines is dropped from
// the Redis cache, through the server and offline (the server stopped and
// started again on the same Redis): the re-push uploads it and the image
// pulls whole.
func TestRedisScrubRepair(t *testing.T) {
	for _, offline := range []bool{false, true} {
		name := "through the server"
		if offline {
			name = "offline, server restarted"
		}
		t.Run(name, func(t *testing.T) {
			rurl := "redis://" + testenv.Redis(t) + "/1"
			dir := t.TempDir()
			opts := registry.Options{DataDir: dir, Redis: rurl}
			addr, srv, stop := testenv.StoppableRegistry(t, opts)
			img := catImage(t, 4000)
			testenv.Push(t, addr+"/cache/scrub:1", img)
			cacheBlobs(t, addr, "cache/scrub", img)
			layer := corruptLayer(t, dir, img)

			if offline {
				stop()
				rep, err := registry.OfflineScrub(t.Context(), opts, registry.ScrubOptions{Repair: true})
				if err != nil {
					t.Fatal(err)
				}
				if len(rep.Problems) == 0 || rep.Problems[0].Kind != registry.ScrubCorruptBlob || !rep.Problems[0].Repaired {
					t.Fatalf("offline repair: %+v", rep.Problems)
				}
				addr, _ = testenv.Registry(t, opts)
			} else {
				if _, err := srv.Scrub(t.Context(), registry.ScrubOptions{Repair: true}); err != nil {
					t.Fatal(err)
				}
			}
			wantMissing(t, addr, "cache/scrub", layer)
			if n := pushLikeDocker(t, addr+"/cache/scrub:1", img); n != 1 {
				t.Errorf("the re-push uploaded %d blobs, want 1 (the quarantined layer)", n)
			}
			if err := pullable(t, addr+"/cache/scrub:1"); err != nil {
				t.Errorf("after repair and re-push: %v", err)
			}
		})
	}
}

// TestRedisOfflineGC: the blobs an offline GC removes are dropped from the
// Redis cache, beside a running server and with the server stopped and
// started again; the running server's catalog no longer lists the
// repository GC removed. The push that follows (go-containerregistry's,
// which HEADs every blob) uploads them again and the image pulls whole.
func TestRedisOfflineGC(t *testing.T) {
	for _, running := range []bool{true, false} {
		name := "server running"
		if !running {
			name = "server stopped and restarted"
		}
		t.Run(name, func(t *testing.T) {
			rurl := "redis://" + testenv.Redis(t) + "/3"
			dir := t.TempDir()
			opts := registry.Options{DataDir: dir, Redis: rurl}
			addr, srv, stop := testenv.StoppableRegistry(t, opts)
			img := catImage(t, 3000)
			d := testenv.Push(t, addr+"/cache/gc:1", img)
			cacheBlobs(t, addr, "cache/gc", img)
			if err := remote.Delete(catRef(t, addr+"/cache/gc@"+d.String())); err != nil {
				t.Fatal(err)
			}
			if repos, err := srv.Catalog().Repositories(t.Context()); err != nil || len(repos) != 1 {
				t.Fatalf("before GC: %+v %v", repos, err)
			}

			if !running {
				stop()
			}
			res, err := registry.OfflineGC(t.Context(), opts, registry.GCOptions{RemoveEmptyRepos: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Blobs) != 3 || len(res.Repositories) != 1 {
				t.Fatalf("offline GC removed %d blobs and %v, want 3 blobs and cache/gc", len(res.Blobs), res.Repositories)
			}
			if running {
				if repos, err := srv.Catalog().Repositories(t.Context()); err != nil || len(repos) != 0 {
					t.Errorf("the running server still lists %+v after the offline GC removed it (%v)", repos, err)
				}
			} else {
				addr, _ = testenv.Registry(t, opts)
			}
			m, _ := img.Manifest()
			for _, l := range m.Layers {
				wantMissing(t, addr, "cache/gc", l.Digest)
			}
			if n := pushLikeDocker(t, addr+"/cache/gc:1", img); n != 2 {
				t.Errorf("the re-push uploaded %d blobs, want 2 (layer and config)", n)
			}
			if err := pullable(t, addr+"/cache/gc:1"); err != nil {
				t.Errorf("after GC and re-push: %v", err)
			}
		})
	}
}

// TestRedisRemovedManifests: a manifest that leaves a repository while its
// blob stays (another repository has it) is no longer answered from the
// cache there: a UI delete, and GC removing it as untagged.
func TestRedisRemovedManifests(t *testing.T) {
	rurl := "redis://" + testenv.Redis(t) + "/4"
	addr, srv := testenv.Registry(t, registry.Options{Redis: rurl})
	ctx := t.Context()
	img := catImage(t, 2000)
	d := testenv.Push(t, addr+"/cache/keep:1", img)
	for _, repo := range []string{"cache/ui", "cache/untagged"} {
		testenv.Push(t, addr+"/"+repo+"@"+d.String(), img)
		if st, _ := ask(t, "HEAD", "http://"+addr+"/v2/"+repo+"/manifests/"+d.String()); st != 200 {
			t.Fatalf("HEAD %s@%s: %d", repo, d, st)
		}
	}
	if _, err := srv.Catalog().DeleteManifest(ctx, "cache/ui", digest.Digest(d.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.GC(ctx, registry.GCOptions{RemoveUntagged: true}); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"cache/ui", "cache/untagged"} {
		if st, _ := ask(t, "HEAD", "http://"+addr+"/v2/"+repo+"/manifests/"+d.String()); st != 404 {
			t.Errorf("HEAD %s@%s after it was removed: %d, want 404", repo, d, st)
		}
		if st, n := ask(t, "GET", "http://"+addr+"/v2/"+repo+"/manifests/"+d.String()); st != 404 {
			t.Errorf("GET %s@%s after it was removed: %d with %d bytes, want 404", repo, d, st, n)
		}
	}
	if err := pullable(t, addr+"/cache/keep:1"); err != nil {
		t.Errorf("the repository that keeps the image: %v", err)
	}
}

// TestRedisUnreachableOffline: an offline GC or repair with Redis
// configured but not answering fails, naming Redis, and removes nothing:
// a removal the cache does not hear of would leave it lying.
func TestRedisUnreachableOffline(t *testing.T) {
	dir := t.TempDir()
	addr, _, stop := testenv.StoppableRegistry(t, registry.Options{DataDir: dir})
	img := catImage(t, 1000)
	d := testenv.Push(t, addr+"/cache/dead:1", img)
	if err := remote.Delete(catRef(t, addr+"/cache/dead@"+d.String())); err != nil {
		t.Fatal(err)
	}
	layer := corruptLayer(t, dir, img)
	stop()
	blobFile := filepath.Join(dir, "storage/docker/registry/v2/blobs/sha256", layer.Hex[:2], layer.Hex, "data")

	// Something that refuses connections where Redis should be.
	opts := registry.Options{DataDir: dir, Redis: "redis://" + deadAddr(t) + "/0"}
	if _, err := registry.OfflineScrub(t.Context(), opts, registry.ScrubOptions{Repair: true}); err == nil || !strings.Contains(err.Error(), "Redis") {
		t.Errorf("offline repair with Redis down: %v; want an error naming Redis", err)
	}
	if _, err := os.Stat(blobFile); err != nil {
		t.Errorf("the repair quarantined the blob although Redis could not be told: %v", err)
	}
	if _, err := registry.OfflineGC(t.Context(), opts, registry.GCOptions{}); err == nil || !strings.Contains(err.Error(), "Redis") {
		t.Errorf("offline GC with Redis down: %v; want an error naming Redis", err)
	}
	if _, err := os.Stat(blobFile); err != nil {
		t.Errorf("the GC removed the blob although Redis could not be told: %v", err)
	}
	// A dry run removes nothing and needs no Redis.
	if res, err := registry.OfflineGC(t.Context(), opts, registry.GCOptions{DryRun: true}); err != nil || len(res.Blobs) != 3 {
		t.Errorf("dry run with Redis down: %+v %v", res, err)
	}
}

// TestRedisKeyLayout: the keys labreg drops are the ones distribution
// writes (registry/storage/cache/redis): after a push and a pull the
// global and the repository's descriptors of a layer are there, and after
// an online GC removed the layer none is left.
func TestRedisKeyLayout(t *testing.T) {
	raddr := testenv.Redis(t)
	addr, srv := testenv.Registry(t, registry.Options{Redis: "redis://" + raddr + "/5"})
	img := catImage(t, 1000)
	d := testenv.Push(t, addr+"/cache/keys:1", img)
	cacheBlobs(t, addr, "cache/keys", img)
	m, _ := img.Manifest()
	l := m.Layers[0].Digest.String()
	rdb := redis.NewClient(&redis.Options{Addr: raddr, DB: 5})
	defer rdb.Close()
	ctx := context.Background()
	keys := func() (global, repoHash int64, member bool) {
		global, _ = rdb.Exists(ctx, "blobs::"+l).Result()
		repoHash, _ = rdb.Exists(ctx, "repository::cache/keys::blobs::"+l).Result()
		member, _ = rdb.SIsMember(ctx, "repository::cache/keys::blobs", l).Result()
		return
	}
	if g, h, mem := keys(); g != 1 || h != 1 || !mem {
		all, _ := rdb.Keys(ctx, "*").Result()
		t.Fatalf("distribution's keys for %s: global %d, repository hash %d, member %v; keys %q", l, g, h, mem, all)
	}
	if err := remote.Delete(catRef(t, addr+"/cache/keys@"+d.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.GC(ctx, registry.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	if g, h, mem := keys(); g != 0 || h != 0 || mem {
		t.Errorf("after GC removed %s: global %d, repository hash %d, member %v; want none", l, g, h, mem)
	}
}

// deadAddr is a HOST:PORT that refuses connections.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}
