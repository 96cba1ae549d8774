package testenv

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"
)

// busyboxLinks are the applets BusyboxImage links to /bin/busybox.
var busyboxLinks = []string{"sh", "cat", "echo", "ls", "sleep", "mkdir", "test", "true", "false"}

// BusyboxImage is a runnable linux image for this machine's architecture
// made from the host's static /bin/busybox (the test stops through Require
// when it is missing). Its one layer holds bin/busybox with sh, cat, echo,
// ls, sleep, mkdir, test, true and false linked to it, empty etc/ and tmp/
// (mode 1777), and files (path -> content, mode 0644, parent directories
// made). Every entry has mtime 0 and a fixed order, so the same files give
// the same digest. Manifest, config and layer have OCI media types; the
// config sets Env PATH=/bin and Created 1970-01-01 and no Entrypoint or Cmd.
// config, when not nil, edits the config further.
func BusyboxImage(t testing.TB, files map[string]string, config func(*v1.Config)) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	Require(t, "busybox", err == nil, "no /bin/busybox (apt-get install busybox-static)")
	mtime := time.Unix(0, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(h *tar.Header, data []byte) {
		h.ModTime = mtime
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	dirs := map[string]bool{".": true}
	var mkdir func(d string)
	mkdir = func(d string) {
		if dirs[d] {
			return
		}
		mkdir(path.Dir(d))
		dirs[d] = true
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		write(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode}, nil)
	}
	for _, d := range []string{"bin", "etc", "tmp"} {
		mkdir(d)
	}
	write(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}, bb)
	for _, l := range busyboxLinks {
		write(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + l, Linkname: "busybox", Mode: 0o777}, nil)
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		content := files[p]
		p = path.Clean(strings.TrimPrefix(p, "/"))
		mkdir(path.Dir(p))
		write(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: 0o644, Size: int64(len(content))}, []byte(content))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer:   layer,
		History: v1.History{CreatedBy: "busybox-static from the test", Created: v1.Time{Time: mtime}},
	})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return WithConfig(t, img, func(cf *v1.ConfigFile) {
		cf.OS, cf.Architecture = "linux", runtime.GOARCH
		cf.Created = v1.Time{Time: mtime}
		cf.Config.Env = []string{"PATH=/bin"}
		if config != nil {
			config(&cf.Config)
		}
	})
}

// WithConfig is img with its config file changed by edit (which gets a
// copy to change).
func WithConfig(t testing.TB, img v1.Image, edit func(*v1.ConfigFile)) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	edit(cf)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Push pushes img to ref (a registry over plain HTTP is fine) and returns
// its manifest digest.
func Push(t testing.TB, ref string, img v1.Image, opts ...remote.Option) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Catalog is the repository list /v2/_catalog of the registry at addr
// (HOST:PORT) returns.
func Catalog(t testing.TB, addr string) []string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ Repositories []string }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c.Repositories
}

// Htpasswd writes an htpasswd file with one bcrypt user (registry.Options
// Htpasswd) and returns its path.
func Htpasswd(t testing.TB, user, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(f, []byte(user+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// WriteFiles writes files (path -> content) under root, making parent
// directories. A content starting with "symlink:" makes a symlink to the
// rest instead.
func WriteFiles(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "symlink:"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// rawManifest is a manifest pushed as given.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// PushReferrer pushes an untagged OCI artifact to repo (HOST:PORT/NAME)
// whose subject is subj: an empty JSON config, one layer of layerType
// holding content, and artifactType. It returns the artifact's manifest
// digest and the bytes the registry stores for it (config, layer and
// manifest).
func PushReferrer(t testing.TB, repo string, subj v1.Image, artifactType, layerType string, content []byte) (v1.Hash, int64) {
	t.Helper()
	r, err := name.NewRepository(repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	layer := static.NewLayer(content, types.MediaType(layerType))
	for _, l := range []v1.Layer{cfg, layer} {
		if err := remote.WriteLayer(r, l); err != nil {
			t.Fatal(err)
		}
	}
	cd, _ := cfg.Digest()
	ld, _ := layer.Digest()
	sd, err := subj.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ssz, _ := subj.Size()
	smt, _ := subj.MediaType()
	raw, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1), "artifactType": artifactType,
		"config":  map[string]any{"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd.String(), "size": 2},
		"layers":  []any{map[string]any{"mediaType": layerType, "digest": ld.String(), "size": len(content)}},
		"subject": map[string]any{"mediaType": string(smt), "digest": sd.String(), "size": ssz},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	if err := remote.Put(r.Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatalf("pushing referrer: %v", err)
	}
	return h, 2 + int64(len(content)) + int64(len(raw))
}
