package registry

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
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

// TestBufConnHalfClosesOnUnreadBody: when a handler answers without
// reading a large request body (a 413, an early 401), net/http sends a
// FIN right after the response and hangs up 500 ms later. Through the
// buffered listener the client must still see the end of the connection
// at once, not after that delay.
func TestBufConnHalfClosesOnUnreadBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})}
	go srv.Serve(readBufferedListener{ln})
	defer srv.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 8 << 20
	go func() {
		fmt.Fprintf(c, "PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
		c.Write(make([]byte, size)) // fails once the server hangs up
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %s", resp.Status)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the response: %v, want EOF", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("the connection ended %v after the response; want a FIN right after it", d)
	}
}

// TestFileBodyCopy serves a file through bufConn with http.ServeContent,
// whole and in ranges: copied through a buffer while fewer than
// maxFileCopies bodies are, and with sendfile once that many are.
func TestFileBodyCopy(t *testing.T) {
	want := make([]byte, 2*fileCopyBuf+777)
	rand.NewChaCha8([32]byte{5}).Read(want)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := serveWrapped(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "blob", time.Time{}, f)
	}), func(ln net.Listener) net.Listener { return readBufferedListener{ln} })
	for _, busy := range []bool{false, true} {
		if busy {
			fileCopies.Add(maxFileCopies)
		}
		for _, rg := range []struct {
			hdr      string
			from, to int
		}{{"", 0, len(want)}, {"bytes=5-", 5, len(want)}, {"bytes=1000-600000", 1000, 600001}, {"bytes=-3", len(want) - 3, len(want)}} {
			got := fastDo(t, "GET", "http://"+addr+"/blob", nil, "Range", rg.hdr)
			if !bytes.Equal(got.body, want[rg.from:rg.to]) {
				t.Errorf("past the bound %v, Range %q: %d, %d bytes, want %d", busy, rg.hdr, got.status, len(got.body), rg.to-rg.from)
			}
		}
		if busy {
			fileCopies.Add(-maxFileCopies)
		}
	}
	if n := fileCopies.Load(); n != 0 {
		t.Errorf("%d file copies counted after all replies", n)
	}
}
