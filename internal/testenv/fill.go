package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/manifest/schema2"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FillRepoName is the name FillRepos gives its i-th repository of 3 tags.
func FillRepoName(i int) string { return fmt.Sprintf("team%03d/svc%05d", i%100, i) }

// FillRepos writes repos repositories of 3 tags (1.0, 1.1, latest; named
// by FillRepoName) and, when bigTags > 0, one repository "big/app" of
// bigTags tags (1.0, 1.1, ...) into dataDir's storage, as `labreg serve
// --data dataDir` keeps it: distribution's filesystem layout, written
// directly, 8 repositories at a time (tens of thousands of images in
// seconds, where pushing them or distribution's storage API, which
// fsyncs and reads back every file, takes minutes). Every tag is its own
// image (its own config with its own created date) over one shared 1 kB
// layer, so sizes and dates must be read per manifest.
func FillRepos(t testing.TB, dataDir string, repos, bigTags int) {
	t.Helper()
	root := filepath.Join(dataDir, "storage", "docker", "registry", "v2")
	write := func(p string, b []byte) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, b, 0o644)
	}
	blob := func(b []byte) (ocispec.Descriptor, error) {
		d := digest.FromBytes(b)
		err := write(filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data"), b)
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}, err
	}
	link := func(p string, d digest.Digest) error { return write(filepath.Join(p, "link"), []byte(d.String())) }
	layer, err := blob(make([]byte, 1000))
	if err != nil {
		t.Fatal(err)
	}
	layer.MediaType = schema2.MediaTypeLayer
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	put := func(repoName string, tags []string, seq int) error {
		repo := filepath.Join(root, "repositories", filepath.FromSlash(repoName))
		if err := link(filepath.Join(repo, "_layers", "sha256", layer.Digest.Encoded()), layer.Digest); err != nil {
			return err
		}
		for i, tag := range tags {
			cfg, _ := json.Marshal(map[string]any{
				"created": base.Add(time.Duration(seq*len(tags)+i) * time.Second), "os": "linux", "architecture": "amd64",
				"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layer.Digest.String()}},
				"config":  map[string]any{"Cmd": []string{"/app", repoName, tag}},
				"history": []any{map[string]any{"created_by": "COPY app /app # buildkit"}},
			})
			cd, err := blob(cfg)
			if err != nil {
				return err
			}
			cd.MediaType = schema2.MediaTypeImageConfig
			m, _ := json.Marshal(schema2.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: schema2.MediaTypeManifest,
				Config: cd, Layers: []ocispec.Descriptor{layer}})
			md, err := blob(m)
			if err != nil {
				return err
			}
			for _, l := range []struct {
				dir string
				d   digest.Digest
			}{
				{filepath.Join(repo, "_layers", "sha256", cd.Digest.Encoded()), cd.Digest},
				{filepath.Join(repo, "_manifests", "revisions", "sha256", md.Digest.Encoded()), md.Digest},
				{filepath.Join(repo, "_manifests", "tags", tag, "index", "sha256", md.Digest.Encoded()), md.Digest},
				{filepath.Join(repo, "_manifests", "tags", tag, "current"), md.Digest},
			} {
				if err := link(l.dir, l.d); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if bigTags > 0 {
		big := make([]string, bigTags)
		for i := range big {
			big[i] = fmt.Sprintf("1.%d", i)
		}
		if err := put("big/app", big, 0); err != nil {
			t.Fatal(err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= repos {
					return
				}
				if err := put(FillRepoName(i), []string{"1.0", "1.1", "latest"}, i+1000); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

// MemDir is a new directory on tmpfs (/dev/shm) where there is one, else
// t.TempDir(), removed when the test ends: distribution's filesystem
// driver fsyncs every file it writes, which makes filling tens of
// thousands of tags on a disk slow.
func MemDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", pattern)
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
