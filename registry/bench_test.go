package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// benchBlobSize is the blob the benchmarks move: 256 MiB, as in issue 2
// (4 MiB under LABREG_BENCH_SMALL=1: see benchSmall).
var benchBlobSize = benchSize(256<<20, 4<<20)

// benchDir returns a temporary directory on a real disk: b.TempDir(),
// unless that is on tmpfs (memory), then one under the package directory.
func benchDir(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if fsType(dir) != "tmpfs" {
		return dir
	}
	dir, err := os.MkdirTemp(".", ".bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	abs, _ := filepath.Abs(dir)
	b.Logf("%s is on tmpfs; benchmarking on %s (%s)", os.TempDir(), abs, fsType(abs))
	return abs
}

// fsType is the type of the file system holding dir, from /proc/mounts
// ("" where there is none).
func fsType(dir string) string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return ""
	}
	best, typ := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, f[2]
		}
	}
	return typ
}

// benchFile writes size pseudo-random bytes into dir and returns the
// file's path and sha256 digest.
func benchFile(tb testing.TB, dir string, size int64) (string, string) {
	tb.Helper()
	p := filepath.Join(dir, "blob")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{1, 2, 3})
	if _, err := io.CopyN(io.MultiWriter(f, h), src, size); err != nil {
		tb.Fatal(err)
	}
	// On disk now, so that its writeback does not land in a measurement.
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return p, "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// serveHandler serves h on a fresh 127.0.0.1 port until the test ends.
func serveHandler(tb testing.TB, h http.Handler) string {
	return serveWrapped(tb, h, func(ln net.Listener) net.Listener { return ln })
}

// serveWrapped is serveHandler on the listener wrap makes of the port's.
func serveWrapped(tb testing.TB, h http.Handler, wrap func(net.Listener) net.Listener) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(wrap(ln))
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// benchRegistry starts a labreg registry on dataDir, served as `labreg
// serve` serves it, and returns it, its address and the address of
// distribution's bare app on a plain http.Server (the "before"
// measurement: what embedding distribution alone gives).
func benchRegistry(tb testing.TB, dataDir string) (srv *Server, labreg, plain string) {
	tb.Helper()
	srv, err := New(context.Background(), Options{DataDir: dataDir})
	if err != nil {
		tb.Fatal(err)
	}
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
	})
	return srv, addr.String(), serveHandler(tb, srv.app)
}

// readWriteListener hands out connections whose ReadFrom copies every
// body with read(2) and write(2) through a buffer of size bytes: with
// 32 KiB (io.Copy's), how labreg's blob fast path sent blobs before
// issue 21.
type readWriteListener struct {
	net.Listener
	size int
}

func (l readWriteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &readWriteConn{Conn: c, size: l.size}, nil
}

type readWriteConn struct {
	net.Conn
	size int
}

func (c *readWriteConn) ReadFrom(r io.Reader) (int64, error) {
	// The wrappers hide the file's WriterTo and the socket's ReadFrom.
	return io.CopyBuffer(struct{ io.Writer }{c.Conn}, struct{ io.Reader }{r}, make([]byte, c.size))
}

var benchClient = newBenchClient("")

// newBenchClient returns an HTTP client whose TCP connections use the
// congestion control cc ("": the system's default).
func newBenchClient(cc string) *http.Client {
	d := &net.Dialer{}
	if cc != "" {
		d.Control = func(_, _ string, c syscall.RawConn) error { return setCongestion(c, cc) }
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
	}}
}

// get downloads url into io.Discard and checks the length.
func get(url string, want int64) error {
	resp, err := benchClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || n != want {
		return fmt.Errorf("GET %s: %s, %d bytes, want %d", url, resp.Status, n, want)
	}
	return nil
}

// getN runs n concurrent downloads of url.
func getN(url string, want int64, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() { errs <- get(url, want) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// do sends a request with benchClient and checks the status.
func do(method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
	return doWith(benchClient, method, u, body, size, hdr, want)
}

// doWith sends a request with c and checks the status.
func doWith(c *http.Client, method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// location resolves the Location header of an upload response.
func location(base string, resp *http.Response, q url.Values) (string, error) {
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	u, _ := url.Parse(base)
	u = u.ResolveReference(loc)
	v := u.Query()
	for k, vs := range q {
		v[k] = vs
	}
	u.RawQuery = v.Encode()
	return u.String(), nil
}

// pushBlob uploads the file at path to repo on addr with c: POST then
// either one monolithic PUT, or (stream) one PATCH with a chunked body
// followed by an empty PUT, which is how docker and go-containerregistry
// push layers.
func pushBlob(c *http.Client, addr, repo, path, dgst string, stream bool) error {
	base := "http://" + addr
	resp, err := doWith(c, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	if stream {
		u, err := location(base, resp, nil)
		if err != nil {
			return err
		}
		if resp, err = sendFile(c, http.MethodPatch, u, path, true, http.StatusAccepted); err != nil {
			return err
		}
		u, err = location(base, resp, url.Values{"digest": {dgst}})
		if err != nil {
			return err
		}
		_, err = doWith(c, http.MethodPut, u, nil, 0, nil, http.StatusCreated)
		return err
	}
	u, err := location(base, resp, url.Values{"digest": {dgst}})
	if err != nil {
		return err
	}
	_, err = sendFile(c, http.MethodPut, u, path, false, http.StatusCreated)
	return err
}

// sendFile sends the file at path as the body of one request with c:
// with its length (net/http then sends it with sendfile), or (stream)
// chunked, as docker sends a layer.
func sendFile(c *http.Client, method, u, path string, stream bool, want int) (*http.Response, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var body io.Reader = f
	size := st.Size()
	if stream {
		// io.NopCloser hides the *os.File so the body goes out chunked.
		body, size = io.NopCloser(f), -1
	}
	return doWith(c, method, u, body, size, map[string]string{"Content-Type": "application/octet-stream"}, want)
}

// serveSink serves, through the listener labreg serves on, a handler that
// reads request bodies and throws them away: sending a blob to it costs
// what the client and the loopback alone cost, before anything is stored.
func serveSink(tb testing.TB) string {
	sink := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	return serveWrapped(tb, sink, func(ln net.Listener) net.Listener { return readBufferedListener{ln} })
}

// removeBlob deletes a committed blob's data from the filesystem driver's
// tree so that the next push has to store it again.
func removeBlob(tb testing.TB, dataDir, dgst string) {
	tb.Helper()
	hex := strings.TrimPrefix(dgst, "sha256:")
	if err := os.RemoveAll(filepath.Join(dataDir, "storage/docker/registry/v2/blobs/sha256", hex[:2], hex)); err != nil {
		tb.Fatal(err)
	}
}

// copyFsync is the push baseline: copy the file and fsync the copy.
func copyFsync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// settle lets the previous contender's leftovers (garbage on the shared
// heap, metadata of the file it just deleted) be dealt with before the
// next one is timed, so that no contender pays for another.
func settle(b *testing.B, dir string) {
	b.Helper()
	runtime.GC()
	f, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fsync(int(f.Fd())); err != nil { // the deletions in dir
		b.Fatal(err)
	}
}

// timed runs f and adds its duration to *d.
func timed(b *testing.B, d *time.Duration, f func() error) {
	b.Helper()
	start := time.Now()
	if err := f(); err != nil {
		b.Fatal(err)
	}
	*d += time.Since(start)
}

// reportRates reports MB/s of every contender and its ratio to the
// baseline, which is contenders[0]. The contenders ran interleaved in the
// same loop so that load from elsewhere on the machine hits all alike.
func reportRates(b *testing.B, bytesPerOp int64, names []string, ds []time.Duration) {
	b.Helper()
	mb := float64(bytesPerOp) * float64(b.N) / 1e6
	base := mb / ds[0].Seconds()
	b.ReportMetric(base, names[0]+"-MB/s")
	for i := 1; i < len(names); i++ {
		rate := mb / ds[i].Seconds()
		b.ReportMetric(rate, names[i]+"-MB/s")
		b.ReportMetric(rate/base, names[i]+"/"+names[0])
	}
}

// BenchmarkBlobPull pulls one 256 MiB blob, once and 16 times at once,
// from a plain http.FileServer of labreg's own file of the blob (baseline:
// net/http sends it with sendfile), from distribution's bare app, and
// from labreg's handler three ways: "labreg" as `labreg serve` serves it
// (the rule of bufConn.ReadFrom: a copy through 512 KiB buffers),
// "labreg-sendfile" on a plain socket (sendfile, as the file server), and
// "labreg-rw32k" copying through 32 KiB (what labreg did before issue
// 21). Each round starts with the next contender, so that none always
// follows the same one. Besides MB/s it reports each contender's CPU time
// per GB moved, the client's included (everything runs in this process):
// the cost a busy machine's load hides least.
func BenchmarkBlobPull(b *testing.B) {
	dataDir := benchDir(b)
	path, dgst := benchFile(b, benchDir(b), benchBlobSize)
	srv, labreg, plain := benchRegistry(b, dataDir)
	if err := pushBlob(benchClient, labreg, "bench/pull", path, dgst, false); err != nil {
		b.Fatal(err)
	}
	hex := strings.TrimPrefix(dgst, "sha256:")
	files := serveHandler(b, http.FileServer(http.Dir(filepath.Join(dataDir, "storage/docker/registry/v2/blobs/sha256", hex[:2], hex))))
	sendfile := serveHandler(b, srv.Handler())
	rw32k := serveWrapped(b, srv.Handler(), func(ln net.Listener) net.Listener {
		return readWriteListener{readBufferedListener{ln}, 32 << 10}
	})
	blob := "/v2/bench/pull/blobs/" + dgst
	urls := []string{"http://" + files + "/data", "http://" + plain + blob, "http://" + labreg + blob,
		"http://" + sendfile + blob, "http://" + rw32k + blob}
	names := []string{"fileserver", "distribution", "labreg", "labreg-sendfile", "labreg-rw32k"}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", conc), func(b *testing.B) {
			for _, u := range urls { // warm the page cache and connections
				if err := getN(u, benchBlobSize, conc); err != nil {
					b.Fatal(err)
				}
			}
			ds := make([]time.Duration, len(urls))
			cpu := make([]time.Duration, len(urls))
			round := 0
			for b.Loop() {
				for j := range urls {
					i := (round + j) % len(urls)
					c := cpuTime()
					timed(b, &ds[i], func() error { return getN(urls[i], benchBlobSize, conc) })
					cpu[i] += cpuTime() - c
				}
				round++
			}
			reportRates(b, int64(conc)*benchBlobSize, names, ds)
			b.ReportMetric(ds[1].Seconds()/ds[2].Seconds(), "labreg/distribution")
			b.ReportMetric(ds[3].Seconds()/ds[2].Seconds(), "labreg/labreg-sendfile")
			gb := float64(conc) * float64(benchBlobSize) * float64(b.N) / 1e9
			for i, name := range names {
				b.ReportMetric(cpu[i].Seconds()/gb, name+"-cpu-s/GB")
			}
		})
	}
}

// BenchmarkBlobPush pushes one 256 MiB blob, monolithic (POST + PUT) and
// streamed (POST + chunked PATCH + PUT, as docker does), to distribution's
// bare app and to labreg, against copying the file with fsync (baseline).
// "send-only" sends the same body to a server that discards it: what the
// client and the loopback alone take, a ceiling for any registry.
//
// The client's TCP congestion control is a sub-benchmark: cubic, Linux's
// default, and the system's default where that differs. BBR (the default
// on this project's CI VMs) paces with timers where the interface has no
// fq qdisc, and loopback has none; on two CPUs that reorders segments
// (TCPOFOQueue, spurious fast retransmits in nstat) and cost every
// contender here ~250 ms of CPU per push. The reference numbers
// for distribution (0.3-0.45x) reproduce with cubic, not with BBR.
func BenchmarkBlobPush(b *testing.B) {
	dataDir := benchDir(b)
	scratch := benchDir(b)
	path, dgst := benchFile(b, scratch, benchBlobSize)
	_, labreg, plain := benchRegistry(b, dataDir)
	sink := "http://" + serveSink(b) + "/blob"
	ccs := []string{"cubic"}
	if sys := systemCongestion(); sys != "" && sys != "cubic" {
		ccs = append(ccs, sys)
	}
	names := []string{"copy+fsync", "send-only", "distribution", "labreg"}
	for _, stream := range []bool{false, true} {
		mode := "monolithic"
		if stream {
			mode = "patch-stream"
		}
		b.Run(mode, func(b *testing.B) {
			for _, cc := range ccs {
				b.Run("client-cc="+cc, func(b *testing.B) {
					if err := congestionAvailable(cc); err != nil {
						b.Skipf("congestion control %s: %v", cc, err)
					}
					c := newBenchClient(cc)
					ds := make([]time.Duration, len(names))
					for b.Loop() {
						dst := filepath.Join(scratch, "copy")
						timed(b, &ds[0], func() error { return copyFsync(path, dst) })
						os.Remove(dst)
						settle(b, scratch)
						timed(b, &ds[1], func() error {
							_, err := sendFile(c, http.MethodPut, sink, path, stream, http.StatusCreated)
							return err
						})
						for i, addr := range []string{plain, labreg} {
							timed(b, &ds[i+2], func() error { return pushBlob(c, addr, "bench/push", path, dgst, stream) })
							removeBlob(b, dataDir, dgst)
							settle(b, dataDir)
						}
					}
					reportRates(b, benchBlobSize, names, ds)
				})
			}
		})
	}
}

// BenchmarkBlobGetSmall measures per-request cost: 64 KiB blob GETs, 8
// clients at once, from distribution's bare app and from labreg (fast path).
func BenchmarkBlobGetSmall(b *testing.B) {
	const size, clients, perClient = 64 << 10, 8, 50
	blob := make([]byte, size)
	rand.NewChaCha8([32]byte{9}).Read(blob)
	dgst := sha256Of(blob)
	_, labreg, plain := benchRegistry(b, benchDir(b))
	if err := pushBlobBytes(labreg, "bench/small", blob, dgst); err != nil {
		b.Fatal(err)
	}
	names := []string{"distribution", "labreg"}
	ds := make([]time.Duration, len(names))
	for b.Loop() {
		for i, addr := range []string{plain, labreg} {
			u := "http://" + addr + "/v2/bench/small/blobs/" + dgst
			timed(b, &ds[i], func() error {
				errs := make(chan error, clients)
				for range clients {
					go func() {
						var err error
						for range perClient {
							if err = get(u, size); err != nil {
								break
							}
						}
						errs <- err
					}()
				}
				var first error
				for range clients {
					if err := <-errs; err != nil && first == nil {
						first = err
					}
				}
				return first
			})
		}
	}
	reqs := float64(clients * perClient * b.N)
	b.ReportMetric(reqs/ds[0].Seconds(), "distribution-req/s")
	b.ReportMetric(reqs/ds[1].Seconds(), "labreg-req/s")
	b.ReportMetric(ds[0].Seconds()/ds[1].Seconds(), "labreg/distribution")
}
