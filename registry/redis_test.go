package registry_test

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestRedisBlobDescriptorCache: with registry.redis, distribution keeps
// blob descriptors in that Redis, and pulls still serve the right bytes.
func TestRedisBlobDescriptorCache(t *testing.T) {
	addr := testenv.Redis(t)
	reg, _ := testenv.Registry(t, registry.Options{Redis: "redis://" + addr + "/2"})
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Push(t, reg+"/lab/cached:v1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	if got := s3GetBlob(t, reg, "lab/cached", ld.String()); len(got) == 0 {
		t.Fatalf("blob %s: no bytes", ld)
	}

	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: 2})
	defer rdb.Close()
	n, err := rdb.Exists(context.Background(), "blobs::"+ld.String()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		keys, _ := rdb.Keys(context.Background(), "*").Result()
		t.Errorf("Redis database 2 has no descriptor of %s; keys: %q", ld, keys)
	}
}
