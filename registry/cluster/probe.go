package cluster

import (
	"context"
	"errors"
	"fmt"
	"path"
)

// ErrNoConditionalWrites is a store that accepted a write its condition
// should have refused.
var ErrNoConditionalWrites = errors.New("the store does not honour conditional writes (If-None-Match, If-Match)")

// Probe checks that cas refuses what a compare-and-swap must refuse: a
// create over an existing object and a replace naming a stale version.
// It writes and removes one object under dir (four or five requests).
func Probe(ctx context.Context, cas CAS, dir string) error {
	key := path.Join(dir, "probe-"+nonce())
	v1, err := cas.Create(ctx, key, []byte("1"))
	if err != nil {
		return fmt.Errorf("probing conditional writes on %s: %w", cas, err)
	}
	last := v1
	defer func() { _ = cas.Delete(context.WithoutCancel(ctx), key, last) }()
	switch v, err := cas.Create(ctx, key, []byte("2")); {
	case err == nil:
		last = v
		return fmt.Errorf("%s: %w: a create over an existing object succeeded", cas, ErrNoConditionalWrites)
	case !errors.Is(err, ErrConflict):
		return fmt.Errorf("probing conditional writes on %s: %w", cas, err)
	}
	v2, err := cas.Replace(ctx, key, v1, []byte("3"))
	if err != nil {
		return fmt.Errorf("probing conditional writes on %s: a replace of the current version: %w", cas, err)
	}
	last = v2
	switch v, err := cas.Replace(ctx, key, v1, []byte("4")); {
	case err == nil:
		last = v
		return fmt.Errorf("%s: %w: a replace of a stale version succeeded", cas, ErrNoConditionalWrites)
	case !errors.Is(err, ErrConflict):
		return fmt.Errorf("probing conditional writes on %s: %w", cas, err)
	}
	return nil
}
