package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestOfflineToolsClearRedis: gc --offline and scrub --repair --offline
// take registry.redis from the same config as the server (here the
// --redis flag; LABREG_REDIS and the file alike) and drop the descriptors of
// what they remove; with that Redis not answering they fail, naming it,
// and remove nothing.
func TestOfflineToolsClearRedis(t *testing.T) {
	raddr := testenv.Redis(t)
	rurl := "redis://" + raddr + "/6"
	dir := t.TempDir()
	addr, _, stop := testenv.StoppableRegistry(t, registry.Options{DataDir: dir, Redis: rurl})
	img, err := random.Image(1500, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.Push(t, addr+"/cli/cache:1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	l, err := remote.Layer(mustDigestRef(t, addr+"/cli/cache@"+ld.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Compressed(); err != nil { // a pull: distribution caches the descriptor
		t.Fatal(err)
	}
	if err := remote.Delete(mustDigestRef(t, addr+"/cli/cache@"+d.String())); err != nil {
		t.Fatal(err)
	}
	stop()
	rdb := redis.NewClient(&redis.Options{Addr: raddr, DB: 6})
	defer rdb.Close()
	cached := func() int64 {
		n, err := rdb.Exists(context.Background(), "blobs::"+ld.String()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if cached() != 1 {
		t.Fatalf("the pull left no descriptor of %s in Redis", ld)
	}
	blob := filepath.Join(dir, "storage/docker/registry/v2/blobs/sha256", ld.Hex[:2], ld.Hex, "data")
	dead := "redis://" + freeAddr(t) + "/0"

	code, stdout, stderr := runCLI(t, "gc", "--offline", "--data", dir, "--redis", dead)
	if code == 0 || !strings.Contains(stderr, "Redis") || strings.Contains(stdout, "removed") {
		t.Errorf("gc --offline with Redis down: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	if _, err := os.Stat(blob); err != nil {
		t.Errorf("gc removed the blob with Redis down: %v", err)
	}

	// scrub finds the blob corrupt once a byte flips.
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLI(t, "scrub", "--repair", "--offline", "--data", dir, "--redis", dead)
	if code == 0 || !strings.Contains(stderr, "Redis") {
		t.Errorf("scrub --repair with Redis down: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	if _, err := os.Stat(blob); err != nil {
		t.Errorf("scrub quarantined the blob with Redis down: %v", err)
	}
	code, stdout, stderr = runCLI(t, "scrub", "--repair", "--offline", "--data", dir, "--redis", rurl)
	if code != 0 || !strings.Contains(stdout, "1 repaired") || cached() != 0 {
		t.Errorf("scrub --repair: exit %d, descriptor cached %d\nstdout %s\nstderr %s", code, cached(), stdout, stderr)
	}

	// The other blobs (config, manifest) go with gc; a descriptor of one
	// is planted as a pull would have left it.
	rdb.HSet(context.Background(), "blobs::"+d.String(), "digest", d.String(), "size", 1)
	code, stdout, stderr = runCLI(t, "gc", "--offline", "--data", dir, "--redis", rurl)
	if code != 0 || !strings.Contains(stdout, "removed 2 blobs") {
		t.Errorf("gc --offline: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	if n, _ := rdb.Exists(context.Background(), "blobs::"+d.String()).Result(); n != 0 {
		t.Errorf("gc --offline left the descriptor of the removed manifest %s in Redis", d)
	}
}

func mustDigestRef(t *testing.T, s string) name.Digest {
	t.Helper()
	r, err := name.NewDigest(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
