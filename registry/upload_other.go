//go:build !linux

package registry

import "os"

// startWriteback is a no-op where sync_file_range(2) does not exist.
func startWriteback(*os.File, int64, int64) {}

// dataSync flushes f to stable storage.
func dataSync(f *os.File) error { return f.Sync() }

// newPieces allocates a piece from the Go heap.
func newPieces() []*pieceBuf { return heapPiece() }

// unmapPiece is never called here: no piece is mapped.
func unmapPiece([]byte) {}
