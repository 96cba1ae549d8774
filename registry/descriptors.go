package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	goredis "github.com/redis/go-redis/v9"

	"github.com/labreg/labreg/config"
)

// distribution caches blob descriptors (registry.redis; labreg configures
// no in-memory cache) and never learns that a blob it described was
// removed by another path than its own DELETE: it then answers HEAD 200
// and GET 200 with no bytes (distribution issue #2945), and a push skips
// the blob and is accepted. So every path that removes content — GC
// (online, offline, a replica's), scrub --repair, a manifest delete —
// drops its descriptors here, before the removal (so that a failing Redis
// stops it) and after it (so that a request that read the storage just
// before the removal cannot leave its descriptor behind).
//
// The keys are those of distribution's registry/storage/cache/redis
// (TestRedisKeyLayout checks them against the distribution labreg embeds):
//
//	blobs::<digest>                      hash: digest, size, mediatype
//	repository::<name>::blobs            set: the digests cached as in <name>
//	repository::<name>::blobs::<digest>  hash: <name>'s mediatype
//
// A repository's descriptor is read through the set and the global hash;
// both go, so that a later push to another repository does not make the
// blob look present again where it was removed.

// descriptorCache is distribution's Redis blob descriptor cache, as
// labreg clears it. A nil *descriptorCache is no cache: drop does nothing.
type descriptorCache struct {
	rdb  *goredis.Client
	addr string // for messages
}

// openDescriptorCache connects (lazily) to the Redis of r.
func openDescriptorCache(r *config.Redis) *descriptorCache {
	return &descriptorCache{rdb: redisClient(r), addr: r.Addr}
}

// redisClient is a client of the Redis r names.
func redisClient(r *config.Redis) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: r.Addr, Username: r.Username, Password: r.Password, DB: r.DB})
}

// descriptorCacheOf is the cache Options.Redis names (nil for none).
func descriptorCacheOf(opts Options) (*descriptorCache, error) {
	if opts.Redis == "" {
		return nil, nil
	}
	r, err := config.ParseRedis(opts.Redis)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return openDescriptorCache(&r), nil
}

// close releases the connections.
func (c *descriptorCache) close() {
	if c != nil {
		c.rdb.Close()
	}
}

// removed is what left the storage, for drop.
type removed struct {
	// blobs left the store: their descriptors go everywhere.
	blobs []digest.Digest
	// links: digests a repository no longer links (its manifests or
	// layers); the blobs may stay for other repositories.
	links map[string][]digest.Digest
	// repos were removed whole.
	repos []string
}

func (r removed) empty() bool { return len(r.blobs) == 0 && len(r.links) == 0 && len(r.repos) == 0 }

// errCache marks a failure to clear the cache.
var errCache = errors.New("the Redis blob descriptor cache")

// drop deletes every descriptor of what r names. Called before a removal:
// when it fails, the removal must not happen.
func (c *descriptorCache) drop(ctx context.Context, r removed) error {
	if c == nil || r.empty() {
		return nil
	}
	if err := c.dropKeys(ctx, r); err != nil {
		return fmt.Errorf("clearing what is to be removed from %w at %s (nothing was removed): %v", errCache, c.addr, err)
	}
	return nil
}

// dropAgain is drop after the removal: the descriptors are gone already
// unless a request read the storage between drop and the removal, so a
// failure says what to do rather than what went wrong in general.
func (c *descriptorCache) dropAgain(ctx context.Context, r removed) error {
	if c == nil || r.empty() {
		return nil
	}
	if err := c.dropKeys(ctx, r); err != nil {
		return fmt.Errorf("removed, but %w at %s could not be cleared again after the removal, and a request served meanwhile may have cached what is gone: flush that Redis database once it answers (it is only a cache): %v", errCache, c.addr, err)
	}
	return nil
}

// batch bounds the digests of one command.
const batch = 500

func (c *descriptorCache) dropKeys(ctx context.Context, r removed) error {
	pipe := c.rdb.Pipeline()
	for b := range slices.Chunk(r.blobs, batch) {
		keys := make([]string, len(b))
		for i, d := range b {
			keys[i] = "blobs::" + d.String()
		}
		pipe.Del(ctx, keys...)
	}
	if len(r.blobs) > 0 {
		// Every repository's set and hashes: a removed blob may be cached
		// in repositories that no longer exist, or that GC unlinked it from.
		iter := c.rdb.Scan(ctx, 0, "repository::*::blobs", 1000).Iterator()
		for iter.Next(ctx) {
			set := iter.Val()
			dropLinks(ctx, pipe, set, r.blobs)
		}
		if err := iter.Err(); err != nil {
			return err
		}
	}
	for repo, ds := range r.links {
		dropLinks(ctx, pipe, repoSetKey(repo), ds)
	}
	for _, repo := range r.repos {
		set := repoSetKey(repo)
		members, err := c.rdb.SMembers(ctx, set).Result()
		if err != nil {
			return err
		}
		keys := []string{set}
		for _, m := range members {
			keys = append(keys, set+"::"+m)
		}
		for k := range slices.Chunk(keys, batch) {
			pipe.Del(ctx, k...)
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// repoSetKey is the set of the digests cached as in repo.
func repoSetKey(repo string) string { return "repository::" + repo + "::blobs" }

// dropLinks removes ds from a repository's set (set) and deletes their
// hashes there.
func dropLinks(ctx context.Context, pipe goredis.Pipeliner, set string, ds []digest.Digest) {
	for b := range slices.Chunk(ds, batch) {
		members := make([]any, len(b))
		hashes := make([]string, len(b))
		for i, d := range b {
			members[i] = d.String()
			hashes[i] = set + "::" + d.String()
		}
		pipe.SRem(ctx, set, members...)
		pipe.Del(ctx, hashes...)
	}
}

// dropCachedBlobs clears the cached descriptors of blobs (digests) a GC
// removed: this server's (Catalog.GC dropped them already, before and
// after the sweep) or another replica's. A failure is logged: the journal
// entry that carries them is not retried.
func (s *Server) dropCachedBlobs(ctx context.Context, blobs []string) {
	if s.descriptors == nil {
		return
	}
	var ds []digest.Digest
	for _, b := range blobs {
		if d, err := digest.Parse(b); err == nil {
			ds = append(ds, d)
		}
	}
	if err := s.descriptors.drop(ctx, removed{blobs: ds}); err != nil {
		s.log.Error("after garbage collection", "err", err)
	}
}
