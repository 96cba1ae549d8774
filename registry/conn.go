package registry

import (
	"io"
	"net"
	"sync"
	"syscall"
)

// connReadBuf is how much a connection reads from its socket at a time
// when net/http asks for less.
const connReadBuf = 256 << 10

var connBufPool = sync.Pool{New: func() any { b := make([]byte, connReadBuf); return &b }}

// readBufferedListener hands out connections that read from the socket
// in large pieces. net/http reads a request through a 4 KiB bufio.Reader,
// and a chunked body (how docker and go-containerregistry send layers)
// one chunk at a time, often 32 KiB or less: two read system calls per
// chunk, ~16,000 for a 256 MiB layer. Reading 256 KiB at a time turns
// that into ~1,000.
type readBufferedListener struct{ net.Listener }

func (l readBufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	bc := &bufConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		bc.raw, _ = sc.SyscallConn()
	}
	return bc, nil
}

// bufConn is a net.Conn whose small reads are served from a buffer that
// is filled by one large read. The buffer comes from a pool once the
// socket has data (not before a read that would wait: an idle keep-alive
// connection or a stalled upload holds none) and goes back as soon as it
// is empty. Reads at least as large as the buffer go straight to the
// socket.
type bufConn struct {
	net.Conn
	raw  syscall.RawConn // nil: not a socket, the buffer is taken before the read
	mu   sync.Mutex      // net/http reads from a background goroutine too
	buf  *[]byte
	r, w int
}

func (c *bufConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		if len(p) >= connReadBuf {
			return c.Conn.Read(p)
		}
		n, err := c.fill()
		if n <= 0 {
			if c.buf != nil {
				c.release()
			}
			return 0, err
		}
		c.r, c.w = 0, n
		// A socket that failed after returning data fails again on the
		// next read, once the buffered data has been taken.
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	if c.r == c.w {
		c.release()
	}
	return n, nil
}

// fill reads from the socket into a pooled buffer, taken only when the
// socket is readable: the runtime's poller waits (with the connection's
// deadlines) while the read would block, holding no buffer.
func (c *bufConn) fill() (int, error) {
	if c.raw == nil {
		c.buf = connBufPool.Get().(*[]byte)
		return c.Conn.Read(*c.buf)
	}
	var (
		n     int
		rerr  error
		ready bool
	)
	err := c.raw.Read(func(fd uintptr) bool {
		if c.buf == nil {
			c.buf = connBufPool.Get().(*[]byte)
		}
		n, rerr = syscall.Read(int(fd), *c.buf)
		if rerr == syscall.EAGAIN {
			c.release()
			return false // wait until readable
		}
		ready = true
		return true
	})
	switch {
	case !ready: // a deadline or close ended the wait
		return 0, wrapNetErr(c, err)
	case rerr != nil:
		return 0, wrapNetErr(c, rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// wrapNetErr makes a socket error look as net.Conn.Read's would, so that
// net/http sees timeouts as net.Error.
func wrapNetErr(c net.Conn, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

func (c *bufConn) release() {
	connBufPool.Put(c.buf)
	c.buf, c.r, c.w = nil, 0, 0
}

// CloseWrite keeps the socket's half-close reachable: net/http sends a FIN
// through it before hanging up on a client whose request body it did not
// read (a 413, an early 401), so that the client sees the end at once.
func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom keeps the socket's own ReadFrom (sendfile, splice) reachable
// for responses that net/http copies from a file.
func (c *bufConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}
