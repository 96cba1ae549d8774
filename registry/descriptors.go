package registry

import (
	"context"

	"github.com/distribution/distribution/v3/registry/storage/cache"
	rediscache "github.com/distribution/distribution/v3/registry/storage/cache/redis"
	"github.com/opencontainers/go-digest"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/config"
)

// distribution caches blob descriptors (registry.redis; labreg configures
// no in-memory cache) and never learns that a blob it described was
// removed by another process: it then answers HEAD 200 and GET 200 with
// no bytes (distribution issue #2945). After a garbage collection the
// descriptors of the removed blobs are cleared; a repository-scoped
// descriptor is read through the global one, so clearing that suffices.

// descriptorCache is the Redis blob descriptor cache distribution uses.
func descriptorCache(r *config.Redis) cache.BlobDescriptorCacheProvider {
	return rediscache.NewRedisBlobDescriptorCacheProvider(redisClient(r))
}

// redisClient is a client of the Redis r names.
func redisClient(r *config.Redis) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: r.Addr, Username: r.Username, Password: r.Password, DB: r.DB})
}

// dropCachedBlobs clears the cached descriptors of blobs (digests).
func (s *Server) dropCachedBlobs(ctx context.Context, blobs []string) {
	if s.descriptors == nil {
		return
	}
	for _, b := range blobs {
		d, err := digest.Parse(b)
		if err != nil {
			continue
		}
		_ = s.descriptors.Clear(ctx, d) // ErrBlobUnknown: not cached
	}
}
