package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdpage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/internal/units"
	"github.com/labreg/labreg/registry"
)

// fixture is a registry with a UI in front of it.
type fixture struct {
	addr string // registry HOST:PORT
	srv  *registry.Server
	ui   *httptest.Server
}

func newFixture(t testing.TB, readOnly bool) *fixture {
	t.Helper()
	addr, srv := testenv.Registry(t, registry.Options{})
	opts := Options{Catalog: srv.Catalog(), History: srv.Events(), GC: srv, Scrub: srv, ReadOnlyState: srv.ReadOnlyState,
		Advertise: "registry.lab:5000", ReadOnly: readOnly, Version: "v-test", DataDir: srv.DataDir(),
		Settings: []Setting{{"registry.listen", ":5000"}, {"registry.proxy_remote_url", "https://bob:hunter2@upstream.example"}}}
	if r, ok := any(srv).(Referrers); ok {
		opts.Referrers = r
	}
	u, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(u)
	t.Cleanup(hs.Close)
	return &fixture{addr: addr, srv: srv, ui: hs}
}

// image builds a one- or two-layer image with a config a user would see.
func image(t testing.TB, arch string, created time.Time, labels map[string]string, layers ...int64) v1.Image {
	t.Helper()
	img := empty.Image
	var adds []mutate.Addendum
	for _, n := range layers {
		l, err := random.Layer(n, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.Addendum{Layer: l})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.WithConfig(t, img, func(cf *v1.ConfigFile) {
		cf.OS, cf.Architecture = "linux", arch
		cf.Created = v1.Time{Time: created}
		cf.Config = v1.Config{
			Entrypoint: []string{"/bin/busybox"}, Cmd: []string{"httpd", "-f", "-p", "80"},
			Env: []string{"PATH=/bin", "APP_MODE=lab"}, WorkingDir: "/www", User: "nobody",
			ExposedPorts: map[string]struct{}{"80/tcp": {}}, Volumes: map[string]struct{}{"/data": {}},
			Labels: labels,
		}
		cf.History = []v1.History{{CreatedBy: "/bin/sh -c #(nop) ENV APP_MODE=lab", EmptyLayer: true}}
		for i := range layers {
			cf.History = append(cf.History, v1.History{CreatedBy: fmt.Sprintf("/bin/sh -c make layer-%d", i+1)})
		}
		cf.History = append(cf.History, v1.History{CreatedBy: `/bin/sh -c #(nop)  CMD ["httpd" "-f" "-p" "80"]`, EmptyLayer: true})
	})
}

func imageSize(t testing.TB, img v1.Image) int64 {
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	n := m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// browser starts headless Chromium and records every JavaScript dialog
// (accepting confirm() dialogs).
type browser struct {
	ctx     context.Context
	mu      sync.Mutex
	dialogs []string
	shots   string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe := testenv.Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Headless,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1400, 1000))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatalf("starting chromium %s: %v", exe, err)
	}
	ctx, cancel3 := context.WithTimeout(bctx, 3*time.Minute)
	t.Cleanup(cancel3)
	b := &browser{ctx: ctx}
	dialogs := chromedp.Events(bctx, cdpage.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, string(ev.Type)+": "+ev.Message)
			b.mu.Unlock()
			chromedp.Call(bctx, cdpage.HandleJavaScriptDialog, cdpage.HandleJavaScriptDialogParams{Accept: ev.Type == cdpage.DialogTypeConfirm})
		}
	}()
	b.shots = os.Getenv("LABREG_ARTIFACTS")
	if b.shots == "" {
		b.shots = t.TempDir()
	}
	b.shots = filepath.Join(b.shots, "ui-screenshots")
	os.MkdirAll(b.shots, 0o755)
	t.Logf("screenshots in %s", b.shots)
	return b
}

func (b *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func run[T any](t *testing.T, b *browser, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (b *browser) shot(t *testing.T, name string) {
	t.Helper()
	buf := run(t, b, "screenshot "+name, chromedp.FullScreenshot(100) /* PNG */)
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// text navigates to url (unless empty) and returns the visible text of sel.
func (b *browser) text(t *testing.T, url, sel string) string {
	t.Helper()
	if url != "" {
		b.do(t, "opening "+url, chromedp.Navigate(url))
	}
	return run(t, b, "reading "+sel+" on "+url, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
}

func (b *browser) attr(t *testing.T, sel, name string) string {
	t.Helper()
	return run(t, b, "reading "+sel, chromedp.AttributeValue(chromedp.CSS(sel), name)).Value
}

func mustContain(t *testing.T, where, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q not shown; got:\n%s", where, w, got)
		}
	}
}

func TestBrowser(t *testing.T) {
	f := newFixture(t, false)
	b := newBrowser(t)
	base := f.ui.URL

	created := time.Date(2026, 3, 14, 9, 26, 0, 0, time.UTC)
	app10 := image(t, "amd64", created, map[string]string{"org.opencontainers.image.title": "lab app"}, 3000, 5000)
	d10 := testenv.Push(t, f.addr+"/lab/app:1.0", app10)
	testenv.Push(t, f.addr+"/lab/app:latest", app10)
	app19 := image(t, "amd64", created.Add(-48*time.Hour), nil, 7000)
	testenv.Push(t, f.addr+"/lab/app:1.9", app19)
	app110 := image(t, "amd64", created.Add(24*time.Hour), nil, 1000)
	testenv.Push(t, f.addr+"/lab/app:1.10", app110)
	amd := image(t, "amd64", created, nil, 2000)
	arm := image(t, "arm64", created, nil, 2500)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	ir, _ := name.ParseReference(f.addr+"/lab/multi:v1", name.Insecure)
	if err := remote.WriteIndex(ir, idx); err != nil {
		t.Fatal(err)
	}
	xss := image(t, "amd64", created, map[string]string{"evil": "<script>alert(1)</script>"}, 100)
	testenv.Push(t, f.addr+"/lab/xss:1", xss)
	sbom, _ := testenv.PushReferrer(t, f.addr+"/lab/app", app10, "application/spdx+json", "application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`))

	// Repositories.
	repos := b.text(t, base+"/", "#repos")
	mustContain(t, "repositories page", repos, "lab/app", "lab/multi", "lab/xss", units.HumanSize(imageSize(t, app10)+imageSize(t, app19)+imageSize(t, app110)))
	b.shot(t, "1-repositories")
	// Filter.
	filtered := b.text(t, base+"/?q=multi", "#repos")
	if strings.Contains(filtered, "lab/app") || !strings.Contains(filtered, "lab/multi") {
		t.Errorf("filter q=multi shows:\n%s", filtered)
	}

	// Two pulls of 1.0 and one of 1.9: charted per hour and per day.
	for _, ref := range []string{"1.0", "1.0", "1.9"} {
		if _, err := remote.Get(mustRef(t, f.addr+"/lab/app:"+ref)); err != nil {
			t.Fatal(err)
		}
	}

	// Tags: shared digest grouped, natural order, sizes, created, platforms.
	b.do(t, "tags page", chromedp.Navigate(base+"/r/lab/app"))
	b.shot(t, "2-tags")
	if got := b.text(t, "", "#pulls-total"); got != "3" {
		t.Errorf("the tags page counts %q pulls, want 3", got)
	}
	bars := run(t, b, "chart bars", chromedp.Evaluate[[]int](`["#pulls-hourly", "#pulls-daily"].map(s => document.querySelectorAll(s + " svg rect").length)`))
	if len(bars) != 2 || bars[0] != 1 || bars[1] != 1 {
		t.Errorf("the charts draw %v bars (per hour, per day), want one each", bars)
	}
	rows := run(t, b, "tag rows", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#tags tbody tr")).map(r => r.innerText.replace(/\s+/g," "))`))
	if len(rows) != 3 {
		t.Fatalf("want 3 rows (1.0+latest grouped, 1.9, 1.10), got %d: %q", len(rows), rows)
	}
	mustContain(t, "shared row", rows[0], "1.0", "latest", "2 tags", d10.Hex[:12], units.HumanSize(imageSize(t, app10)), "2026-03-14 09:26 UTC", "linux/amd64")
	mustContain(t, "second row", rows[1], "1.9", units.HumanSize(imageSize(t, app19)), "2026-03-12 09:26 UTC")
	mustContain(t, "third row (1.9 < 1.10)", rows[2], "1.10", "2026-03-15 09:26 UTC")
	shared := run(t, b, "shared class", chromedp.Evaluate[int](`document.querySelectorAll("#tags tr.shared").length`))
	if shared != 1 {
		t.Errorf("%d rows marked as shared digest, want 1", shared)
	}
	byCreated := b.text(t, base+"/r/lab/app?sort=created", "#tags tbody tr:first-child")
	mustContain(t, "sort=created first row", byCreated, "1.10")

	// Multi-arch index.
	multi := b.text(t, base+"/r/lab/multi", "#tags")
	mustContain(t, "index row", multi, "v1", "linux/amd64, linux/arm64", units.HumanSize(imageSize(t, amd)+imageSize(t, arm)))
	b.shot(t, "3-index-tags")
	plats := b.text(t, base+"/r/lab/multi/-/tag/v1", "#manifests")
	mustContain(t, "index detail", plats, "linux/amd64", "linux/arm64")

	// Tag detail.
	b.do(t, "detail", chromedp.Navigate(base+"/r/lab/app/-/tag/1.0"))
	b.shot(t, "4-detail")
	if got := b.text(t, "", "#pulls-total"); got != "2" {
		t.Errorf("the page of 1.0 counts %q pulls, want 2", got)
	}
	detail := b.text(t, "", "main")
	mustContain(t, "detail page", detail,
		d10.String(), "1.0", "latest", "/bin/busybox", "httpd -f -p 80", "APP_MODE=lab", "/www", "nobody", "80/tcp", "/data", "lab app",
		"make layer-1", "make layer-2", units.HumanSize(layerSize(t, app10, 0)), units.HumanSize(layerSize(t, app10, 1)),
		"docker pull registry.lab:5000/lab/app:1.0",
		"docker service update --with-registry-auth --image registry.lab:5000/lab/app:1.0 SERVICE")
	df := b.text(t, "", "#dockerfile")
	mustContain(t, "dockerfile", df, "ENV APP_MODE=lab", "RUN make layer-1", `CMD ["httpd" "-f" "-p" "80"]`)
	refs := b.text(t, "", "#referrers")
	if _, ok := any(f.srv).(Referrers); ok {
		mustContain(t, "referrers", refs, "application/spdx+json", sbom.Hex[:12])
	} else {
		t.Logf("registry has no referrers API in this build; referrers section says: %s", refs)
	}

	// XSS: the label is text, no alert fired.
	evil := b.text(t, base+"/r/lab/xss/-/tag/1", "#labels")
	mustContain(t, "xss label", evil, "<script>alert(1)</script>")
	b.shot(t, "5-xss")
	b.mu.Lock()
	for _, d := range b.dialogs {
		if strings.HasPrefix(d, "alert") {
			t.Errorf("a JavaScript alert fired: %s", d)
		}
	}
	b.mu.Unlock()

	// Delete one of two tags sharing a digest: the other survives.
	b.do(t, "delete latest",
		chromedp.Navigate(base+"/r/lab/app"),
		chromedp.Click(chromedp.CSS(`input[name=tag][value=latest]`)),
		chromedp.Click(chromedp.CSS(`#delete-selected`)),
		chromedp.WaitVisible(chromedp.CSS(`#flash`)))
	after := b.text(t, "", "#tags")
	if strings.Contains(after, "latest") || !strings.Contains(after, "1.0") {
		t.Errorf("after deleting latest the tags show:\n%s", after)
	}
	b.shot(t, "6-after-delete-tag")
	if _, err := remote.Head(mustRef(t, f.addr+"/lab/app:1.0")); err != nil {
		t.Errorf("lab/app:1.0 gone from the registry after deleting latest: %v", err)
	}
	if _, err := remote.Head(mustRef(t, f.addr+"/lab/app:latest")); err == nil {
		t.Errorf("lab/app:latest still in the registry")
	}

	// Delete a manifest after a confirmation page listing its tags.
	d19, _ := app19.Digest()
	confirm := b.text(t, base+"/r/lab/app/-/delete-manifest/"+d19.String(), "#doomed")
	mustContain(t, "confirmation", confirm, "1.9")
	b.shot(t, "7-confirm")
	b.do(t, "confirm delete", chromedp.Click(chromedp.CSS(`#confirm-delete`)), chromedp.WaitVisible(chromedp.CSS(`#flash`)))

	// GC: dry run then real; freed bytes are 1.9's blobs and manifest.
	raw19, _ := app19.RawManifest()
	want := imageSize(t, app19) + int64(len(raw19))
	b.do(t, "gc dry run", chromedp.Navigate(base+"/gc"), chromedp.Click(chromedp.CSS(`#gc-dry`)),
		chromedp.WaitVisible(chromedp.CSS(`#gc-result`)))
	dry := b.attr(t, "#gc-bytes", "data-bytes")
	b.shot(t, "8-gc-dry")
	b.do(t, "gc", chromedp.Click(chromedp.CSS(`#gc-run`)))
	b.do(t, "gc result", chromedp.WaitVisible(chromedp.CSS(`#gc-result[data-dry="false"]`)))
	freed := b.attr(t, "#gc-bytes", "data-bytes")
	b.shot(t, "9-gc")
	if dry != fmt.Sprint(want) || freed != fmt.Sprint(want) {
		t.Errorf("GC dry run says %s bytes, GC freed %s; want %d (lab/app:1.9's layer, config and manifest)", dry, freed, want)
	}
	// What is still referenced is intact: pull 1.0, the index and the referrer.
	for _, ref := range []string{"lab/app:1.0", "lab/multi:v1", "lab/app@" + sbom.String()} {
		if _, err := remote.Get(mustRef(t, f.addr+"/"+ref)); err != nil {
			t.Errorf("%s after GC: %v", ref, err)
		}
	}
	if _, err := remote.Image(mustRef(t, f.addr+"/lab/app:1.0")); err != nil {
		t.Errorf("lab/app:1.0 image after GC: %v", err)
	}

	// Events and status.
	ev := b.text(t, base+"/events", "#events")
	mustContain(t, "events", ev, "push", "lab/app", "delete", "gc", "latest")
	b.shot(t, "10-events")
	st := b.text(t, base+"/status", "main")
	mustContain(t, "status", st, "v-test", f.srv.DataDir(), "registry.listen", "https://bob:redacted@upstream.example")
	if strings.Contains(st, "hunter2") {
		t.Error("status page shows a password")
	}
	b.shot(t, "11-status")
}

func layerSize(t testing.TB, img v1.Image, i int) int64 {
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m.Layers[i].Size
}

// getBody GETs url and returns the response body.
func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return string(b)
}

func mustRef(t testing.TB, s string) name.Reference {
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestForms checks what a browser cannot easily: CSRF, read-only mode,
// the gate during GC and escaping in the raw HTML.
func TestForms(t *testing.T) {
	f := newFixture(t, false)
	ro := newFixture(t, true)
	img := image(t, "amd64", time.Now(), map[string]string{"x": "<script>alert(1)</script>"}, 100)
	testenv.Push(t, f.addr+"/r/one:a", img)
	testenv.Push(t, ro.addr+"/r/one:a", img)

	tests := []struct {
		name   string
		url    string
		method string
		body   string
		cookie bool
		want   int
	}{
		{"post without csrf is refused", f.ui.URL + "/r/r/one/-/delete-tags", "POST", "tag=a", false, 403},
		{"post with wrong csrf is refused", f.ui.URL + "/r/r/one/-/delete-tags", "POST", "tag=a&csrf=00000000000000000000000000000000", true, 403},
		{"read-only UI refuses deletes", ro.ui.URL + "/r/r/one/-/delete-tags", "POST", "tag=a&csrf=" + strings.Repeat("a", 32), true, 403},
		{"read-only UI refuses API deletes", ro.ui.URL + "/api/repositories/r/one/-/tags/a", "DELETE", "", false, 403},
		{"read-only UI has no GC", ro.ui.URL + "/gc", "GET", "", false, 403},
		{"API GC needs JSON", f.ui.URL + "/api/gc", "POST", "dry_run=1", false, 400},
		{"unknown tag is 404", f.ui.URL + "/r/r/one/-/tag/nope", "GET", "", false, 404},
		{"unknown API path is 404", f.ui.URL + "/api/nope", "GET", "", false, 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, tc.url, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.cookie {
				req.AddCookie(&http.Cookie{Name: csrfCookie, Value: strings.Repeat("a", 32)})
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// The tag survived all of that.
	if _, err := remote.Head(mustRef(t, f.addr+"/r/one:a")); err != nil {
		t.Fatalf("tag deleted by a refused request: %v", err)
	}
	// The API deletes one tag; its twin on the same digest stays.
	testenv.Push(t, f.addr+"/r/one:b", img)
	req, _ := http.NewRequest("DELETE", f.ui.URL+"/api/repositories/r/one/-/tags/b", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("API delete of r/one:b: %d", resp.StatusCode)
	}
	if _, err := remote.Head(mustRef(t, f.addr+"/r/one:b")); err == nil {
		t.Error("r/one:b survived its delete")
	}
	if _, err := remote.Head(mustRef(t, f.addr+"/r/one:a")); err != nil {
		t.Errorf("r/one:a went with r/one:b: %v", err)
	}
	var page TagPage
	resp, err = http.Get(f.ui.URL + "/api/repositories/r/one/-/tags")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if page.Total != 1 || len(page.Groups) != 1 || page.Groups[0].Tags[0].Name != "a" || page.Groups[0].Size != imageSize(t, img) {
		t.Errorf("API tags after the delete: %+v", page)
	}
	// The read-only UI shows no delete controls.
	html := getBody(t, ro.ui.URL+"/r/r/one")
	if strings.Contains(html, "delete-") || strings.Contains(html, "Delete") {
		t.Errorf("read-only tags page offers deletes")
	}
	// Raw HTML escapes labels.
	html = getBody(t, f.ui.URL+"/r/r/one/-/tag/a")
	if strings.Contains(html, "<script>alert") || !strings.Contains(html, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("label not escaped in HTML")
	}
}
