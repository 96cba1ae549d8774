package registry

import (
	"bytes"
	"testing"
)

// TestBufPoolPiecesAreDistinct takes more pieces than one mapping holds,
// fills each with its own byte, checks that none overwrote another, and
// gives them back to a pool that keeps only some (the rest are unmapped).
func TestBufPoolPiecesAreDistinct(t *testing.T) {
	p := &bufPool{maxIdle: 3}
	var got []*pieceBuf
	for i := range 9 {
		b := p.get()
		if len(b.b) != uploadBufSize || cap(b.b) != uploadBufSize {
			t.Fatalf("piece %d: len %d cap %d, want %d", i, len(b.b), cap(b.b), uploadBufSize)
		}
		for j := range b.b {
			b.b[j] = byte(i + 1)
		}
		got = append(got, b)
	}
	for i, b := range got {
		if want := bytes.Repeat([]byte{byte(i + 1)}, uploadBufSize); !bytes.Equal(b.b, want) {
			t.Fatalf("piece %d was overwritten by another piece", i)
		}
	}
	for _, b := range got {
		p.put(b)
	}
	if len(p.idle) != 3 {
		t.Fatalf("pool keeps %d idle pieces, want 3", len(p.idle))
	}
	// A kept piece is handed out again, still writable.
	b := p.get()
	b.b[0], b.b[uploadBufSize-1] = 42, 42
}
