package registry

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// TestBufConnDeliversStreamInOrder writes a stream in pieces of random
// size and reads it back through a bufConn with reads of random size,
// small (served from the buffer) and large (straight from the socket).
func TestBufConnDeliversStreamInOrder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bl := readBufferedListener{ln}

	want := make([]byte, 3*connReadBuf+12345)
	rand.NewChaCha8([32]byte{7}).Read(want)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		rnd := rand.New(rand.NewPCG(1, 2))
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 1+rnd.IntN(40<<10))
			if _, err := c.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}()

	c, err := bl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bc := c.(*bufConn)
	rnd := rand.New(rand.NewPCG(3, 4))
	var got []byte
	for {
		size := 1 + rnd.IntN(4096)
		if rnd.IntN(4) == 0 {
			size = connReadBuf + rnd.IntN(connReadBuf)
		}
		p := make([]byte, size)
		n, err := bc.Read(p)
		got = append(got, p[:n]...)
		if bc.buf != nil && bc.r == bc.w {
			t.Fatal("an emptied buffer is still held")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d; equal prefix %d", len(got), len(want), commonPrefix(got, want))
	}
	if bc.buf != nil {
		t.Fatal("a drained connection still holds a read buffer")
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
