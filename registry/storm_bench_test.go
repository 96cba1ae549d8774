package registry_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// BenchmarkStorm (#12): N simulated nodes (LABREG_STORM_NODES, default
// 1000) pull one image at the same moment, each with its own HTTP client
// and connections, doing what dockerd does: the manifest by digest, the
// config, then the layers, at most 3 downloads at once (dockerd's
// max-concurrent-downloads). The image is generated: 3 layers, 32 MiB in
// all. Scenarios, interleaved in every iteration of one run:
//
//	labreg        one `labreg serve` (built from this module), filesystem
//	distribution  distribution's own registry binary (`registry serve`,
//	              testenv.StartDistribution) on its own filesystem root
//	              holding the same image, with its example config's
//	              in-memory blob-descriptor cache
//	mirrors       the same `labreg serve` as origin behind 3 zone mirrors
//	              (labreg with ProxyRemoteURL in the benchmark's process,
//	              new and cold in every iteration), N/3 nodes each
//	s3-redirect   3 `labreg serve` replicas on one versitygw bucket with
//	              redirect=true and one HTTP secret file, N/3 nodes each:
//	              the replicas serve manifests and answer blob GETs with a
//	              presigned URL that the nodes follow to the store
//
// The image is pushed once to a labreg in the benchmark's process; the
// labreg origin and distribution start on copies of its storage tree, and
// the replicas on the bucket another in-process labreg pushed it to, so
// that no measured server holds what a push left in its memory. The
// registries are processes of their own, so that what is measured of the
// origin is the origin's alone: its peak RSS (VmHWM, reset before every
// storm; the RSS at the reset is reported too) and the bytes it sent
// (wchar of /proc/PID/io: what it wrote to sockets, plus its few log
// lines). For s3-redirect "origin" is the 3 replicas (sum of bytes,
// largest peak RSS) and the store's bytes are reported apart.
//
// Reported per scenario (medians over the iterations): wall time,
// time-to-image p50/p99 over the nodes, MiB the origin sent (and in
// images), failed nodes, origin peak RSS; and labreg/distribution wall.
// Nodes check each body's length, not its digest (hashing 32 GiB would
// measure the clients' CPU, not the registries). #12's targets: 0 errors
// at N = 1000; labreg wall <= 0.8x distribution's; mirrors' origin egress
// <= (3+1) x the image; origin peak RSS <= 300 MiB. Run it alone, a quick
// check with few nodes, or the real thing:
//
//	LABREG_STORM_NODES=30 go test -run '^$' -bench Storm -benchtime 1x ./registry/
//	go test -run '^$' -bench Storm -benchtime 3x -timeout 60m ./registry/
//
// LABREG_BENCH_SMALL=1 (make test) makes it 30 nodes and a 2 MiB image.
func BenchmarkStorm(b *testing.B) {
	nodes := testenv.BenchSize(1000, 30)
	if s := os.Getenv("LABREG_STORM_NODES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 3 {
			b.Fatalf("LABREG_STORM_NODES=%q: want a number of nodes, at least 3", s)
		}
		nodes = n
	}
	layers := stormLayers([]int{16 << 20, 10 << 20, 6 << 20})
	if testenv.BenchSmall() {
		layers = stormLayers([]int{1 << 20, 640 << 10, 384 << 10})
	}

	// The image is pushed to a labreg in this process, and its storage
	// tree copied to the origin's and to distribution's, so that neither
	// server starts the storm holding what a push left in its memory.
	seed := b.TempDir()
	seedAddr, _ := testenv.Registry(b, registry.Options{DataDir: seed})
	img := pushStormImage(b, seedAddr, "storm/app", layers)
	originDir, distDir := b.TempDir(), b.TempDir()
	copyTree(b, filepath.Join(seed, "storage"), filepath.Join(originDir, "storage"))
	copyTree(b, filepath.Join(seed, "storage"), distDir)
	origin := testenv.Serve(b, originDir)
	dist := testenv.StartDistribution(b, "filesystem:\n  rootdirectory: "+distDir+
		"\ndelete:\n  enabled: true\ncache:\n  blobdescriptor: inmemory\n")

	store, bucket := testenv.S3(b)
	secret := writeSecret(b, strings.Repeat("storm!!!", 8))
	access, secretKey := store.KeyFiles(b)
	s3Opts := registry.Options{Storage: store.URL(bucket) + "&redirect=true",
		S3AccessKeyFile: access, S3SecretKeyFile: secretKey, HTTPSecretFile: secret}
	s3Seed, _ := testenv.Registry(b, s3Opts)
	if d := pushStormImage(b, s3Seed, "storm/app", layers); d.manifest != img.manifest {
		b.Fatalf("the image pushed to the bucket is %s, to the filesystem %s", d.manifest, img.manifest)
	}
	var replicas []string
	var replicaPids []int
	for range 3 {
		r := testenv.Serve(b, "", "--storage", s3Opts.Storage, "--s3-access-key-file", access,
			"--s3-secret-key-file", secretKey, "--http-secret-file", secret)
		replicas = append(replicas, r.Addr)
		replicaPids = append(replicaPids, r.Pid())
	}
	// Every server answers with the image before the storm.
	for _, addr := range append([]string{origin.Addr, dist.Addr}, replicas...) {
		if err := pullLikeDockerd(http.DefaultClient, addr, img); err != nil {
			b.Fatalf("pulling the image from %s: %v", addr, err)
		}
	}

	scenarios := []struct {
		name    string
		targets func() []string
		origin  []int // pids of the origin's processes
		store   bool  // count the store's bytes too
	}{
		{"labreg", func() []string { return []string{origin.Addr} }, []int{origin.Pid()}, false},
		{"distribution", func() []string { return []string{dist.Addr} }, []int{dist.Pid()}, false},
		{"mirrors", func() []string {
			var ms []string
			for range 3 {
				m, _ := testenv.Registry(b, registry.Options{DataDir: b.TempDir(), ProxyRemoteURL: "http://" + origin.Addr})
				ms = append(ms, m)
			}
			return ms
		}, []int{origin.Pid()}, false},
		{"s3-redirect", func() []string { return replicas }, replicaPids, true},
	}
	type result struct {
		wall, p50, p99      time.Duration
		originMiB, storeMiB float64
		errors              int
		peakRSSMiB          float64
		rssBeforeMiB        float64 // at the start of the storm
		firstErr            error
	}
	results := map[string][]result{}
	cond := benchConditions()
	runs := 0
	for b.Loop() {
		runs++
		for _, sc := range scenarios {
			targets := sc.targets()
			runtime.GC()
			var before, storeBefore, rssBefore int64
			for _, pid := range sc.origin {
				testenv.ResetPeakRSS(b, pid)
				rssBefore = max(rssBefore, testenv.PeakRSS(b, pid))
				before += testenv.ProcWritten(b, pid)
			}
			if sc.store {
				storeBefore = testenv.ProcWritten(b, store.Pid())
			}
			start := time.Now()
			times, errs, first := storm(nodes, targets, img)
			r := result{wall: time.Since(start), errors: errs, firstErr: first}
			var after, peak int64
			for _, pid := range sc.origin {
				after += testenv.ProcWritten(b, pid)
				peak = max(peak, testenv.PeakRSS(b, pid))
			}
			r.originMiB = float64(after-before) / (1 << 20)
			r.peakRSSMiB, r.rssBeforeMiB = float64(peak)/(1<<20), float64(rssBefore)/(1<<20)
			if sc.store {
				r.storeMiB = float64(testenv.ProcWritten(b, store.Pid())-storeBefore) / (1 << 20)
			}
			r.p50, r.p99 = quantile(times, 0.50), quantile(times, 0.99)
			results[sc.name] = append(results[sc.name], r)
		}
	}
	imageMiB := float64(img.total) / (1 << 20)
	var lines []string
	walls := map[string]float64{}
	for _, sc := range scenarios {
		rs := results[sc.name]
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return medianOf(v)
		}
		wall := med(func(r result) float64 { return r.wall.Seconds() })
		walls[sc.name] = wall
		p50 := med(func(r result) float64 { return r.p50.Seconds() })
		p99 := med(func(r result) float64 { return r.p99.Seconds() })
		out := med(func(r result) float64 { return r.originMiB })
		errs := med(func(r result) float64 { return float64(r.errors) })
		rss := med(func(r result) float64 { return r.peakRSSMiB })
		rss0 := med(func(r result) float64 { return r.rssBeforeMiB })
		b.ReportMetric(wall, sc.name+"-wall-s")
		b.ReportMetric(p50, sc.name+"-p50-s")
		b.ReportMetric(p99, sc.name+"-p99-s")
		b.ReportMetric(out, sc.name+"-origin-MiB")
		b.ReportMetric(errs, sc.name+"-errors")
		b.ReportMetric(rss, sc.name+"-origin-peakRSS-MiB")
		line := fmt.Sprintf("  %-12s wall %6.2fs  time-to-image p50 %6.2fs p99 %6.2fs  origin sent %8.1f MiB (%.1f images)  errors %v  origin peak RSS %6.1f MiB (%.1f at the start)",
			sc.name, wall, p50, p99, out, out/imageMiB, errs, rss, rss0)
		if sc.store {
			st := med(func(r result) float64 { return r.storeMiB })
			b.ReportMetric(st, sc.name+"-store-MiB")
			line += fmt.Sprintf("  store sent %8.1f MiB (%.1f images)", st, st/imageMiB)
		}
		for _, r := range rs {
			if r.firstErr != nil {
				line += fmt.Sprintf("  first error: %v", r.firstErr)
				break
			}
		}
		lines = append(lines, line)
	}
	ratio := walls["labreg"] / walls["distribution"]
	b.ReportMetric(ratio, "labreg/distribution-wall")
	// One line a scenario: the testing package keeps 9 lines of a benchmark's log.
	b.Logf("storm: %d nodes, image %.1f MiB (3 layers), %d run(s), medians; %s, then load %s; labreg/distribution wall %.2f\n%s",
		nodes, imageMiB, runs, cond, loadAvg(), ratio, strings.Join(lines, "\n"))
}

// copyTree copies the directory tree src to dst.
func copyTree(tb testing.TB, src, dst string) {
	tb.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		tb.Fatalf("copying %s: %v", src, err)
	}
}

// stormLayers makes layers of these sizes of pseudo-random bytes, the
// same in every run.
func stormLayers(sizes []int) [][]byte {
	src := rand.NewChaCha8([32]byte{'s', 't', 'o', 'r', 'm'})
	var ls [][]byte
	for _, n := range sizes {
		l := make([]byte, n)
		src.Read(l)
		ls = append(ls, l)
	}
	return ls
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

// pushStormImage pushes an image of these layers (and a small config) to
// addr, monolithic uploads, and returns it.
func pushStormImage(tb testing.TB, addr, repo string, layers [][]byte) stormImage {
	tb.Helper()
	put := func(body []byte) blobRef {
		sum := sha256.Sum256(body)
		d := "sha256:" + hex.EncodeToString(sum[:])
		resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			tb.Fatalf("starting an upload: %s", resp.Status)
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			tb.Fatal(err)
		}
		base, _ := url.Parse("http://" + addr + "/")
		loc = base.ResolveReference(loc)
		q := loc.Query()
		q.Set("digest", d)
		loc.RawQuery = q.Encode()
		req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(body))
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
	for _, body := range layers {
		l := put(body)
		img.layers = append(img.layers, l)
		img.total += l.size
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
