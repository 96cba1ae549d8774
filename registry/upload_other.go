//go:build !linux

package registry

import "os"

// dataSync flushes f to stable storage.
func dataSync(f *os.File) error { return f.Sync() }

// newPieces allocates a piece from the Go heap.
func newPieces() []*pieceBuf { return heapPiece() }

// unmapPiece is never called here: no piece is mapped.
func unmapPiece([]byte) {}
