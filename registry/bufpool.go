package registry

import "sync"

// A pieceBuf is one of the uploadBufSize pieces uploads are read,
// written and hashed in. On Linux most are carved from memory mapped
// outside the Go heap and backed by transparent huge pages (see
// newPieces); mapped says so, and that it must be unmapped, not left to
// the garbage collector.
type pieceBuf struct {
	b      []byte
	mapped bool
	small  bool // a smallPieceSize piece from smallPieces, not this pool
}

// bufPool keeps pieces between uploads: up to maxIdle of them; the rest
// are given back as they are returned.
type bufPool struct {
	mu      sync.Mutex
	idle    []*pieceBuf
	maxIdle int
}

var uploadBufPool = &bufPool{maxIdle: uploadBufs}

func (p *bufPool) get() *pieceBuf {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		p.idle = newPieces()
	}
	b := p.idle[len(p.idle)-1]
	p.idle = p.idle[:len(p.idle)-1]
	return b
}

func (p *bufPool) put(b *pieceBuf) {
	p.mu.Lock()
	keep := len(p.idle) < p.maxIdle
	if keep {
		p.idle = append(p.idle, b)
	}
	p.mu.Unlock()
	if !keep && b.mapped {
		unmapPiece(b.b)
	}
}

// heapPiece is a piece from the Go heap, where no mapping is to be had.
func heapPiece() []*pieceBuf {
	return []*pieceBuf{{b: make([]byte, uploadBufSize)}}
}
