package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	goredis "github.com/redis/go-redis/v9"
)

// Redis is a CAS in Redis, for a store that does not honour conditional
// writes: each key is a hash of its data and a version drawn from one
// counter (so versions never repeat, even across a key's deletion), and
// every write is one Lua script that compares and sets atomically.
type Redis struct {
	client *goredis.Client
	addr   string
}

var _ CAS = (*Redis)(nil)

// NewRedis uses client (at addr, for messages). It makes no request.
func NewRedis(client *goredis.Client, addr string) *Redis {
	return &Redis{client: client, addr: addr}
}

func (r *Redis) String() string { return "redis://" + r.addr }

const redisPrefix = "labreg:cluster:"

var (
	redisCounter = redisPrefix + "version"
	redisCreate  = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'v', v)
return v`)
	redisReplace = goredis.NewScript(`
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[2] then return false end
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'v', v)
return v`)
	redisDelete = goredis.NewScript(`
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return 1`)
)

func (r *Redis) Get(ctx context.Context, key string) ([]byte, string, error) {
	vals, err := r.client.HMGet(ctx, redisPrefix+key, "d", "v").Result()
	if err != nil {
		return nil, "", fmt.Errorf("reading %s from %s: %w", key, r, err)
	}
	d, okD := vals[0].(string)
	v, okV := vals[1].(string)
	if !okD || !okV {
		return nil, "", ErrNotExist
	}
	return []byte(d), v, nil
}

func (r *Redis) run(ctx context.Context, s *goredis.Script, key string, args ...any) (string, error) {
	n, err := s.Run(ctx, r.client, []string{redisPrefix + key, redisCounter}, args...).Int64()
	if errors.Is(err, goredis.Nil) {
		return "", ErrConflict
	}
	if err != nil {
		return "", fmt.Errorf("writing %s to %s: %w", key, r, err)
	}
	return strconv.FormatInt(n, 10), nil
}

func (r *Redis) Create(ctx context.Context, key string, data []byte) (string, error) {
	return r.run(ctx, redisCreate, key, data)
}

func (r *Redis) Replace(ctx context.Context, key, version string, data []byte) (string, error) {
	return r.run(ctx, redisReplace, key, data, version)
}

func (r *Redis) Delete(ctx context.Context, key, version string) error {
	_, err := r.run(ctx, redisDelete, key, version)
	return err
}
