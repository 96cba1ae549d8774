// Package cluster is what replicas of one registry agree on through their
// shared store: a lease (one garbage collection at a time) decided by the
// store's own compare-and-swap, and a change signal an idle replica reads
// for the price of one conditional GET.
//
// Nothing here reads, sleeps and reads again: a lease is an object
// created with If-None-Match: * and replaced only with If-Match on the
// version its holder last wrote (S3 and every S3-compatible store that
// honours conditional writes), or the same compare-and-swap in Redis
// where the store does not honour them (Probe tells). The store decides
// who won.
package cluster

import (
	"context"
	"errors"
)

// ErrConflict is a conditional write that lost: the object exists (create)
// or has changed since the version given (replace).
var ErrConflict = errors.New("conditional write refused: the object changed")

// ErrNotExist is a read of an object that is not there.
var ErrNotExist = errors.New("no such object")

// CAS is the compare-and-swap surface of a store: each write names the
// version it expects, and loses with ErrConflict when the store holds
// another.
type CAS interface {
	// Get reads key and its version; ErrNotExist when there is none.
	Get(ctx context.Context, key string) (data []byte, version string, err error)
	// Create writes key only if it does not exist.
	Create(ctx context.Context, key string, data []byte) (version string, err error)
	// Replace writes key only if its version is still version.
	Replace(ctx context.Context, key, version string, data []byte) (newVersion string, err error)
	// Delete removes key only if its version is still version.
	Delete(ctx context.Context, key, version string) error
	// String names the store for messages ("s3://bucket", "redis://host:port").
	String() string
}

// Signal is a small object every change rewrites and idle readers poll
// with If-None-Match: an unchanged object costs one GET and no body.
type Signal interface {
	// Put rewrites key unconditionally.
	Put(ctx context.Context, key string, data []byte) error
	// Changed reads key unless its version is still version (changed
	// false, the store answered 304). A missing key is unchanged while
	// version is "".
	Changed(ctx context.Context, key, version string) (newVersion string, changed bool, err error)
}
