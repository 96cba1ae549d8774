package ui

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/manifest/schema2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

func benchUI(b *testing.B, srv *registry.Server) *UI {
	u, err := New(Options{Catalog: srv.Catalog(), History: srv.Events(), GC: srv, Advertise: "bench:5000", DataDir: srv.DataDir()})
	if err != nil {
		b.Fatal(err)
	}
	return u
}

// cpuTime is this process's user+system CPU time: on a loaded machine it
// says what a page costs better than wall time does.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs f in a b.Loop and reports wall and CPU milliseconds per page.
func measure(b *testing.B, f func()) {
	start := cpuTime()
	for b.Loop() {
		f()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/page")
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1000/float64(b.N), "cpu-ms/page")
}

// benchGet GETs path from h as a browser on this host would (Host
// localhost: the UI refuses names it does not answer to).
func benchGet(b *testing.B, h http.Handler, path string) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "http://localhost"+path, nil))
	if rec.Code != 200 {
		b.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body.String())
	}
	return rec.Body.Len()
}

// BenchmarkPages measures server time for the repositories page and a
// 1,000-tag page (sizes and dates shown) over 10,000 repositories x 3 tags
// plus one repository of 1,000 tags: warm (index and digest cache built),
// cold (first view on a freshly started server), and the baseline — what a
// UI that reads the /v2/ API needs for the same page (one round trip per
// repository, manifest and config).
// LABREG_UI_BENCH_REPOS changes the 10,000; LABREG_BENCH_SMALL=1 (make
// test) makes it 300 repositories and a repository of 100 tags.
func BenchmarkPages(b *testing.B) {
	repos, bigTags := testenv.BenchSize(10000, 300), testenv.BenchSize(1000, 100)
	if n, err := strconv.Atoi(os.Getenv("LABREG_UI_BENCH_REPOS")); err == nil {
		repos = n
	}
	dir := testenv.MemDir(b, "labreg-ui-bench-")
	b.Logf("data dir %s", dir)
	start := time.Now()
	testenv.FillRepos(b, dir, repos, bigTags)
	b.Logf("filled %d repositories x 3 tags + 1 x %d tags in %s", repos, bigTags, time.Since(start).Round(time.Millisecond))
	addr, srv := testenv.Registry(b, registry.Options{DataDir: dir})
	u := benchUI(b, srv)
	const reposPage, tagsPage = "/", "/r/big/app?per=1000"

	// Cold: the first view on a freshly started server. "first-start" has
	// no summary cache file (a data dir labreg never served); "restart"
	// has the one the previous run left.
	cold := func(path string, keepCache bool) func(b *testing.B) {
		return func(b *testing.B) {
			measure(b, func() {
				if !keepCache {
					os.Remove(filepath.Join(dir, "catalog-cache.jsonl"))
				}
				c, err := registry.NewCatalog(context.Background(), dir)
				if err != nil {
					b.Fatal(err)
				}
				cu, _ := New(Options{Catalog: c, History: srv.Events(), DataDir: dir})
				benchGet(b, cu, path)
			})
		}
	}
	b.Run("repositories/cold-first-start", cold(reposPage, false))
	b.Run("tags1000/cold-first-start", cold(tagsPage, false))
	benchGet(b, benchUI(b, srv), reposPage) // leaves the cache file
	b.Run("repositories/cold-restart", cold(reposPage, true))
	b.Run("tags1000/cold-restart", cold(tagsPage, true))
	benchGet(b, u, reposPage) // builds the index
	benchGet(b, u, tagsPage)  // renders the 1,000 rows once
	b.Run("repositories/warm", func(b *testing.B) {
		var n int
		measure(b, func() { n = benchGet(b, u, reposPage) })
		b.ReportMetric(float64(n), "html-bytes")
	})
	b.Run("repositories-sorted-by-push/warm", func(b *testing.B) {
		measure(b, func() { benchGet(b, u, "/?sort=push") })
	})
	b.Run("tags1000/warm", func(b *testing.B) {
		var n int
		measure(b, func() { n = benchGet(b, u, tagsPage) })
		b.ReportMetric(float64(n), "html-bytes")
	})
	b.Run("tags1000-sorted-by-created/warm", func(b *testing.B) {
		measure(b, func() { benchGet(b, u, tagsPage+"&sort=created") })
	})

	// Baseline: the same pages read through the registry API over HTTP.
	base := "http://" + addr + "/v2/"
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	fetch := func(url string, accept string, out any) {
		req, _ := http.NewRequest("GET", url, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("GET %s: %s", url, resp.Status)
		}
		if out == nil {
			io.Copy(io.Discard, resp.Body)
			return
		}
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			b.Fatal(err)
		}
	}
	imageOf := func(repo, tag string) {
		var m struct{ Config ocispec.Descriptor }
		fetch(base+repo+"/manifests/"+tag, schema2.MediaTypeManifest, &m)
		fetch(base+repo+"/blobs/"+m.Config.Digest.String(), "", nil)
	}
	b.Run("repositories/baseline-v2-api", func(b *testing.B) {
		measure(b, func() { // first 50 names, their tags, each tag's manifest and config
			var cat struct{ Repositories []string }
			fetch(base+"_catalog?n=50", "", &cat)
			for _, r := range cat.Repositories {
				var tl struct{ Tags []string }
				fetch(base+r+"/tags/list", "", &tl)
				for _, t := range tl.Tags {
					imageOf(r, t)
				}
			}
		})
	})
	b.Run("tags1000/baseline-v2-api", func(b *testing.B) {
		measure(b, func() {
			var tl struct{ Tags []string }
			fetch(base+"big/app/tags/list", "", &tl)
			for _, t := range tl.Tags {
				imageOf("big/app", t)
			}
		})
	})
}
