package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkStorm: N simulated nodes (LABREG_STORM_NODES, default 1000)
// pull one image at the same moment, each with its own HTTP client and
// connections, doing what dockerd does: the manifest by digest, the
// config, then the layers, at most 3 downloads at once (dockerd's
// max-concurrent-downloads). The image is generated: 3 layers, 32 MiB in
// all. Scenarios, interleaved in every iteration of one run:
//
//	labreg        one labreg registry (Handler, as `labreg serve` serves it)
//	distribution  distribution's own app (handlers.App) on a plain
//	              net/http server, on the same storage
//	mirrors       the labreg origin behind 3 zone mirrors (labreg with
//	              ProxyRemoteURL, cold caches), N/3 nodes each
//
// Reported per scenario: wall time, time-to-image p50/p99 over the
// nodes, MiB the origin sent (all bytes written on its connections), and
// errors. peak-heap is the whole process's peak Go heap in use (clients,
// mirrors and origin share the process: an upper bound for the origin).
// Nodes check each body's length, not its digest (hashing 32 GiB would
// measure the clients' CPU, not the registries). Run it alone:
//
//	LABREG_STORM_NODES=1000 go test -run '^$' -bench Storm -benchtime 3x ./registry/
func BenchmarkStorm(b *testing.B) {
	nodes := 1000
	if s := os.Getenv("LABREG_STORM_NODES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 3 {
			b.Fatalf("LABREG_STORM_NODES=%q: want a number of nodes, at least 3", s)
		}
		nodes = n
	}
	srv, err := New(context.Background(), Options{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	var originOut, plainOut atomic.Int64
	labreg := serveWrapped(b, srv.Handler(), func(ln net.Listener) net.Listener {
		return countingListener{readBufferedListener{ln}, &originOut}
	})
	plain := serveWrapped(b, srv.app, func(ln net.Listener) net.Listener { return countingListener{ln, &plainOut} })
	img := pushStormImage(b, labreg, "storm/app", []int64{16 << 20, 10 << 20, 6 << 20})

	type result struct {
		wall        time.Duration
		p50, p99    time.Duration
		originMiB   float64
		errors      int
		peakHeapMiB float64
		firstErr    error
	}
	scenarios := []string{"labreg", "distribution", "mirrors"}
	results := map[string][]result{}
	for range b.N {
		for _, sc := range scenarios {
			var targets []string
			counter := &originOut
			switch sc {
			case "labreg":
				targets = []string{labreg}
			case "distribution":
				targets, counter = []string{plain}, &plainOut
			case "mirrors":
				for range 3 {
					m, err := New(context.Background(), Options{DataDir: b.TempDir(), ProxyRemoteURL: "http://" + labreg})
					if err != nil {
						b.Fatal(err)
					}
					targets = append(targets, serveWrapped(b, m.Handler(), func(ln net.Listener) net.Listener {
						return readBufferedListener{ln}
					}))
				}
			}
			runtime.GC()
			before := counter.Load()
			peak := watchHeap()
			start := time.Now()
			times, errs, first := storm(nodes, targets, img)
			wall := time.Since(start)
			r := result{wall: wall, originMiB: float64(counter.Load()-before) / (1 << 20), errors: errs,
				peakHeapMiB: float64(peak()) / (1 << 20), firstErr: first}
			r.p50, r.p99 = quantile(times, 0.50), quantile(times, 0.99)
			results[sc] = append(results[sc], r)
		}
	}
	b.StopTimer()
	imageMiB := float64(img.total) / (1 << 20)
	b.Logf("storm: %d nodes, image %.1f MiB (3 layers), %d run(s), GOMAXPROCS %d; medians:", nodes, imageMiB, b.N, runtime.GOMAXPROCS(0))
	for _, sc := range scenarios {
		rs := results[sc]
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			sort.Float64s(v)
			return v[len(v)/2]
		}
		wall := med(func(r result) float64 { return r.wall.Seconds() })
		p50 := med(func(r result) float64 { return r.p50.Seconds() })
		p99 := med(func(r result) float64 { return r.p99.Seconds() })
		out := med(func(r result) float64 { return r.originMiB })
		errs := med(func(r result) float64 { return float64(r.errors) })
		heap := med(func(r result) float64 { return r.peakHeapMiB })
		b.ReportMetric(wall, sc+"-wall-s")
		b.ReportMetric(p50, sc+"-p50-s")
		b.ReportMetric(p99, sc+"-p99-s")
		b.ReportMetric(out, sc+"-origin-MiB")
		b.ReportMetric(errs, sc+"-errors")
		b.ReportMetric(heap, sc+"-peakheap-MiB")
		b.Logf("  %-12s wall %6.2fs  time-to-image p50 %6.2fs p99 %6.2fs  origin sent %8.1f MiB (%.1f images)  errors %v  peak heap %6.1f MiB",
			sc, wall, p50, p99, out, out/imageMiB, errs, heap)
		for _, r := range rs {
			if r.firstErr != nil {
				b.Logf("  %-12s first error: %v", sc, r.firstErr)
				break
			}
		}
	}
	if ws := results["distribution"]; len(ws) > 0 {
		b.ReportMetric(results["labreg"][0].wall.Seconds()/ws[0].wall.Seconds(), "labreg/distribution-wall")
	}
}

// stormImage is a pushed image: its repository, manifest and blobs.
type stormImage struct {
	repo, manifest string
	config         blobRef
	layers         []blobRef
	total          int64
}

type blobRef struct {
	digest string
	size   int64
}

// pushStormImage pushes an image of random layers of these sizes (and a
// small config) to addr, monolithic uploads, and returns it.
func pushStormImage(tb testing.TB, addr, repo string, sizes []int64) stormImage {
	tb.Helper()
	put := func(body []byte) blobRef {
		sum := sha256.Sum256(body)
		d := "sha256:" + hex.EncodeToString(sum[:])
		resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Body.Close()
		loc, err := location("http://"+addr, resp, url.Values{"digest": {d}})
		if err != nil {
			tb.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPut, loc, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
		if resp, err = http.DefaultClient.Do(req); err != nil {
			tb.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			tb.Fatalf("pushing a blob: %s", resp.Status)
		}
		return blobRef{d, int64(len(body))}
	}
	img := stormImage{repo: repo}
	img.config = put([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json", desc{"application/vnd.oci.image.config.v1+json", img.config.digest, img.config.size}, nil}
	for _, n := range sizes {
		body := make([]byte, n)
		rand.Read(body)
		l := put(body)
		img.layers = append(img.layers, l)
		img.total += n
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar+gzip", l.digest, l.size})
	}
	raw, _ := json.Marshal(m)
	sum := sha256.Sum256(raw)
	img.manifest = "sha256:" + hex.EncodeToString(sum[:])
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/"+repo+"/manifests/v1", bytes.NewReader(raw))
	req.Header.Set("Content-Type", m.MediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		tb.Fatalf("pushing the manifest: %s", resp.Status)
	}
	return img
}

// storm makes n nodes pull img at once, node i from targets[i%len]; it
// returns each successful node's time to image, the number of failed
// nodes and the first error.
func storm(n int, targets []string, img stormImage) ([]time.Duration, int, error) {
	var (
		mu    sync.Mutex
		times []time.Duration
		errs  int
		first error
		wg    sync.WaitGroup
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxConnsPerHost: 3, DisableCompression: true} // its own connections
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Minute}
			<-start
			t0 := time.Now()
			err := pullLikeDockerd(c, targets[i%len(targets)], img)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				if first == nil {
					first = err
				}
				return
			}
			times = append(times, time.Since(t0))
		}()
	}
	close(start)
	wg.Wait()
	return times, errs, first
}

// pullLikeDockerd fetches the manifest by digest, the config, then the
// layers, 3 at a time.
func pullLikeDockerd(c *http.Client, addr string, img stormImage) error {
	fetch := func(kind, ref string, want int64) error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/"+img.repo+"/"+kind+"/"+ref, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return fmt.Errorf("%s %s: %w", kind, ref, err)
		}
		if resp.StatusCode != http.StatusOK || (want >= 0 && n != want) {
			return fmt.Errorf("%s %s: %s, %d bytes", kind, ref, resp.Status, n)
		}
		return nil
	}
	if err := fetch("manifests", img.manifest, -1); err != nil {
		return err
	}
	if err := fetch("blobs", img.config.digest, img.config.size); err != nil {
		return err
	}
	sem := make(chan struct{}, 3)
	errc := make(chan error, len(img.layers))
	for _, l := range img.layers {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errc <- fetch("blobs", l.digest, l.size)
		}()
	}
	for range img.layers {
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// watchHeap samples the process's Go heap in use every 20ms until the
// returned function is called, which returns the peak.
func watchHeap() func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-stopped
		return peak.Load()
	}
}

// countingListener counts the bytes written on the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}
