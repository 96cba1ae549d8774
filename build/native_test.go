package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

func newTestNative(t *testing.T) *Native {
	t.Helper()
	epoch := time.Unix(1700000000, 0).UTC()
	n, err := NewNative(NativeOptions{Epoch: &epoch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// buildOne plans tg, builds it with the native engine n and publishes it
// with pub, as Builder does for one target without bases to build.
func buildOne(ctx context.Context, n *Native, tg Target, pub Publisher) (Result, error) {
	p, err := NewPlan(ctx, tg, nil)
	if err != nil {
		return Result{}, err
	}
	a, err := n.Build(ctx, p)
	if err != nil {
		return Result{}, err
	}
	return pub.Publish(ctx, a, p)
}

func tarGz(t *testing.T, files map[string]string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(files[n])), Typeflag: tar.TypeReg})
		tw.Write([]byte(files[n]))
	}
	tw.Close()
	zw.Close()
	return b.String()
}

// layerFiles reads one layer's tar headers and contents.
func layerFiles(t *testing.T, l v1.Layer) map[string]*tar.Header {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

const fullDockerfile = `# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE} AS files
COPY --chmod=0750 tool.sh /opt/tool.sh

FROM scratch
ARG VERSION=1.2
ENV APP_HOME=/srv/app PATH=/usr/bin
WORKDIR $APP_HOME
COPY --chown=1000:1001 site/ ./www/
COPY --from=files /opt/tool.sh /usr/local/bin/tool
ADD bundle.tar.gz /data/
LABEL org.opencontainers.image.version=$VERSION maintainer="lab"
EXPOSE 80 53/udp
VOLUME /data
USER 1000:1001
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD ["/usr/local/bin/tool", "check"]
SHELL ["/bin/ash", "-c"]
ENTRYPOINT ["/usr/local/bin/tool"]
CMD serve --port 80
`

func TestNativeBuildsEveryInstruction(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	dir := writeTree(t, map[string]string{
		"Dockerfile":      fullDockerfile,
		".dockerignore":   "site/*.tmp\n",
		"tool.sh":         "#!/bin/sh\necho tool\n",
		"site/index.html": "<h1>hi</h1>",
		"site/a/b.css":    "b{}",
		"site/junk.tmp":   "ignored",
		"bundle.tar.gz":   tarGz(t, map[string]string{"inside/x.txt": "x"}),
	})
	n := newTestNative(t)
	ref := addr + "/lab/full:1"
	res, err := buildOne(context.Background(), n, Target{Context: dir, Ref: ref, Insecure: true,
		BuildArgs: map[string]string{"VERSION": "2.0"}}, &Registry{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded != 4 { // 3 layers + config
		t.Errorf("first push uploaded %d blobs, want 4", res.Uploaded)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if d.String() != res.Digest {
		t.Fatalf("registry has %s, build reported %s", d, res.Digest)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	epoch := time.Unix(1700000000, 0).UTC()
	checks := []struct {
		what      string
		got, want any
	}{
		{"os", cf.OS, "linux"},
		{"architecture non-empty", cf.Architecture != "", true},
		{"created", cf.Created.Time.UTC(), epoch},
		{"diff_ids", len(cf.RootFS.DiffIDs), 3},
		{"history", len(cf.History), 15},
		{"history[1]", cf.History[1].CreatedBy, "ENV APP_HOME=/srv/app PATH=/usr/bin # labreg"},
		{"history[3] has a layer", cf.History[3].EmptyLayer, false},
		{"env", strings.Join(c.Env, " "), "APP_HOME=/srv/app PATH=/usr/bin"},
		{"workdir", c.WorkingDir, "/srv/app"},
		{"label", c.Labels["org.opencontainers.image.version"], "2.0"},
		{"label quoted", c.Labels["maintainer"], "lab"},
		{"ports", len(c.ExposedPorts), 2},
		{"udp port", c.ExposedPorts["53/udp"], struct{}{}},
		{"volume", c.Volumes["/data"], struct{}{}},
		{"user", c.User, "1000:1001"},
		{"stopsignal", c.StopSignal, "SIGQUIT"},
		{"healthcheck", strings.Join(c.Healthcheck.Test, " "), "CMD /usr/local/bin/tool check"},
		{"healthcheck interval", c.Healthcheck.Interval, 5 * time.Second},
		{"shell", strings.Join(c.Shell, " "), "/bin/ash -c"},
		{"entrypoint", strings.Join(c.Entrypoint, " "), "/usr/local/bin/tool"},
		{"cmd (shell form uses SHELL)", strings.Join(c.Cmd, "|"), "/bin/ash|-c|serve --port 80"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	site := layerFiles(t, layers[0])
	for _, p := range []string{"srv/", "srv/app/", "srv/app/www/", "srv/app/www/index.html", "srv/app/www/a/b.css"} {
		if site[p] == nil {
			t.Errorf("layer 1 lacks %s (has %v)", p, keys(site))
		}
	}
	if site["srv/app/www/junk.tmp"] != nil {
		t.Error(".dockerignore'd site/junk.tmp was copied")
	}
	if h := site["srv/app/www/index.html"]; h != nil && (h.Uid != 1000 || h.Gid != 1001 || !h.ModTime.Equal(epoch) || h.Uname != "") {
		t.Errorf("index.html: uid %d gid %d mtime %v uname %q; want 1000 1001 %v \"\"", h.Uid, h.Gid, h.ModTime, h.Uname, epoch)
	}
	tool := layerFiles(t, layers[1])["usr/local/bin/tool"]
	if tool == nil || tool.Mode != 0o750 || tool.Uid != 0 {
		t.Errorf("COPY --from --chmod=0750: got %+v", tool)
	}
	if layerFiles(t, layers[2])["data/inside/x.txt"] == nil {
		t.Error("ADD bundle.tar.gz was not unpacked into /data")
	}

	// Same directory again: same digest, nothing uploaded.
	again, err := buildOne(context.Background(), newTestNative(t), Target{Context: dir, Ref: ref, Insecure: true,
		BuildArgs: map[string]string{"VERSION": "2.0"}}, &Registry{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest || again.Uploaded != 0 {
		t.Errorf("rebuild: digest %s uploaded %d; want %s and 0", again.Digest, again.Uploaded, res.Digest)
	}
}

func keys[V any](m map[string]V) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}

// TestBuilderExampleImages builds the lab's example images (images/): bases
// first, same digests twice, nothing uploaded the second time, layers of
// the base mounted rather than uploaded into the other repositories.
func TestBuilderExampleImages(t *testing.T) {
	testenv.Tool(t, "go", "install Go")
	addr, _ := testenv.Registry(t, registry.Options{})
	images := filepath.Join(testenv.RepoRoot(t), "images")
	// The lab's examples (make up's EXAMPLES), not labreg's own image.
	dirs, err := Discover(filepath.Join(images, "webserver"), filepath.Join(images, "myhttpd"), filepath.Join(images, "samsung"))
	if err != nil {
		t.Fatal(err)
	}
	var targets []Target
	for _, d := range slices.Backward(dirs) { // worst order: derived images first
		targets = append(targets, Target{Context: d.Path, Ref: addr + "/" + d.Repo + ":" + d.Tag, Insecure: true,
			BuildArgs: map[string]string{"REGISTRY": addr}})
	}
	run := func() []Result {
		var got []Result
		b := &Builder{Native: newTestNative(t)}
		if err := b.Build(context.Background(), targets, func(r Result) { got = append(got, r) }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	first := run()
	if len(first) != 5 || first[0].Ref != addr+"/webserver:1" {
		t.Fatalf("built %v; want 5 images, webserver:1 first", first)
	}
	for _, r := range first[1:] {
		if r.Uploaded != 2 { // its page's layer + config; the base's layers are mounted
			t.Errorf("%s uploaded %d blobs, want 2", r.Ref, r.Uploaded)
		}
	}
	second := run()
	for i := range first {
		if second[i].Digest != first[i].Digest || second[i].Uploaded != 0 {
			t.Errorf("rebuild of %s: %s, %d uploaded; want %s, 0", first[i].Ref, second[i].Digest, second[i].Uploaded, first[i].Digest)
		}
	}
}

func TestBuilderPushesNothingWhenOneDockerfileIsBad(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	good := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a"})
	bad := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY nope.txt /\n"})
	b := &Builder{Native: newTestNative(t)}
	err := b.Build(context.Background(), []Target{
		{Context: good, Ref: addr + "/good:1", Insecure: true},
		{Context: bad, Ref: addr + "/bad:1", Insecure: true},
	}, nil)
	if err == nil || !strings.Contains(err.Error(), `Dockerfile:2: COPY: source "nope.txt" not found in build context`) {
		t.Fatalf("err = %v, want the bad COPY named", err)
	}
	if got := testenv.Catalog(t, addr); len(got) != 0 {
		t.Fatalf("registry has %v after a failed build, want nothing", got)
	}
}

func TestNativeUnreachableRegistry(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	dir := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a"})
	_, err = buildOne(context.Background(), newTestNative(t), Target{Context: dir, Ref: dead + "/x:1", Insecure: true}, &Registry{})
	if err == nil || !strings.Contains(err.Error(), "pushing "+dead+"/x:1") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v; want a push error naming the registry", err)
	}
	// A base image from the dead registry.
	dir = writeTree(t, map[string]string{"Dockerfile": "FROM " + dead + "/base:1\n"})
	_, err = buildOne(context.Background(), newTestNative(t), Target{Context: dir, Ref: dead + "/x:1", Insecure: true}, &Registry{})
	if err == nil || !strings.Contains(err.Error(), "Dockerfile:1: FROM: pulling base image "+dead+"/base:1") {
		t.Fatalf("err = %v; want the FROM line and the registry", err)
	}
}

// TestNativeNoOutput: a layout publisher without a directory is an error
// before anything is built, as with the other engines, not a layout
// written into the working directory.
func TestNativeNoOutput(t *testing.T) {
	dir := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a"})
	t.Chdir(t.TempDir())
	b := &Builder{Native: newTestNative(t), Publisher: &Layout{}}
	err := b.Build(context.Background(), []Target{{Context: dir, Ref: "127.0.0.1:9/x:1"}}, nil)
	if !errors.Is(err, errNoOutput) {
		t.Fatalf("err = %v, want %v", err, errNoOutput)
	}
	if _, err := os.Stat(DefaultLayout); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s written anyway (stat: %v)", DefaultLayout, err)
	}
}

func TestNativeNoPushWritesLayout(t *testing.T) {
	dir := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a"})
	out := filepath.Join(t.TempDir(), "layout")
	res, err := buildOne(context.Background(), newTestNative(t), Target{Context: dir, Ref: "127.0.0.1:9/x:1"}, &Layout{Dir: out})
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Digest.String() != res.Digest ||
		m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "127.0.0.1:9/x:1" {
		t.Fatalf("layout index = %+v, want one image %s named 127.0.0.1:9/x:1", m.Manifests, res.Digest)
	}
}

func TestNativeMissingBaseSaysHow(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	dir := writeTree(t, map[string]string{"Dockerfile": "ARG REGISTRY\nFROM ${REGISTRY}/webserver:1\n"})
	_, err := buildOne(context.Background(), newTestNative(t), Target{Context: dir, Ref: addr + "/x:1", Insecure: true,
		BuildArgs: map[string]string{"REGISTRY": addr}}, &Registry{})
	want := "Dockerfile:2: FROM: base image " + addr + "/webserver:1 is not in the registry (build its directory in the same run"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

// TestBuilderLayoutBases: with a Layout publisher (labreg build --no-push)
// an image FROM another target of the same run builds on the one just
// written to the layout, with no registry at all, and both are in the
// layout under their names.
func TestBuilderLayoutBases(t *testing.T) {
	const reg = "127.0.0.1:9" // nothing listens: nothing may be pulled or pushed
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{
		"base/1/Dockerfile": "FROM scratch\nCOPY f /f\n",
		"base/1/f":          "base",
		"app/1/Dockerfile":  "ARG REGISTRY\nFROM ${REGISTRY}/base:1\nCOPY g /g\n",
		"app/1/g":           "app",
	})
	out := filepath.Join(t.TempDir(), "layout")
	b := &Builder{Native: newTestNative(t), Publisher: &Layout{Dir: out}}
	var got []Result
	err := b.Build(context.Background(), []Target{
		{Context: filepath.Join(root, "app/1"), Ref: reg + "/app:1", Insecure: true, BuildArgs: map[string]string{"REGISTRY": reg}},
		{Context: filepath.Join(root, "base/1"), Ref: reg + "/base:1", Insecure: true},
	}, func(r Result) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Ref != reg+"/base:1" || got[1].Ref != reg+"/app:1" {
		t.Fatalf("built %+v, want base:1 then app:1", got)
	}
	p, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(got[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(h)
	if err != nil {
		t.Fatalf("layout lacks app:1: %v", err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("app:1 has %d layers (%v), want the base's and its own", len(layers), err)
	}
}
