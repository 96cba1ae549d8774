package registry_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

func catRef(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func catImage(t testing.TB, size int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, 1)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// blobsSize is what a GC frees when img's manifest is gone and nothing
// else shares its blobs: config, layers and the manifest itself.
func blobsSize(t testing.TB, img v1.Image) int64 {
	m, _ := img.Manifest()
	raw, _ := img.RawManifest()
	n := m.Config.Size + int64(len(raw))
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// pullable fetches the manifest and every blob of ref.
func pullable(t testing.TB, ref string) error {
	t.Helper()
	desc, err := remote.Get(catRef(t, ref))
	if err != nil {
		return err
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return err
		}
		im, _ := idx.IndexManifest()
		for _, m := range im.Manifests {
			if err := pullable(t, ref[:strings.LastIndexAny(ref, ":@")]+"@"+m.Digest.String()); err != nil {
				return err
			}
		}
		return nil
	}
	m := struct {
		Config v1.Descriptor   `json:"config"`
		Layers []v1.Descriptor `json:"layers"`
	}{}
	json.Unmarshal(desc.Manifest, &m)
	repo := catRef(t, ref).Context()
	for _, d := range append(m.Layers, m.Config) {
		l, err := remote.Layer(repo.Digest(d.Digest.String()))
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func TestGC(t *testing.T) {
	tests := []struct {
		name       string
		opts       registry.GCOptions
		wantGone   []string // references no longer pullable
		wantRepos  []string // repositories removed
		extraBytes bool     // the untagged image's blobs go too
	}{
		{name: "dry run removes nothing", opts: registry.GCOptions{DryRun: true}},
		{name: "blobs of deleted manifests go", opts: registry.GCOptions{}},
		{name: "untagged manifests go, referrers and index children stay", opts: registry.GCOptions{RemoveUntagged: true},
			wantGone: []string{"untagged"}, extraBytes: true},
		{name: "empty repositories go", opts: registry.GCOptions{RemoveUntagged: true, RemoveEmptyRepos: true},
			wantGone: []string{"untagged"}, wantRepos: []string{"gc/empty"}, extraBytes: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, srv := testenv.Registry(t, registry.Options{})
			ctx := context.Background()
			a := catImage(t, 3000)
			testenv.Push(t, addr+"/gc/app:a", a)
			sig, _ := testenv.PushReferrer(t, addr+"/gc/app", a, "application/vnd.dev.cosign.artifact.sig.v1+json",
				"application/vnd.dev.cosign.simplesigning.v1+json", []byte("signature-"+addr+"/gc/app"))
			idx, err := random.Index(1000, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteIndex(catRef(t, addr+"/gc/app:multi"), idx); err != nil {
				t.Fatal(err)
			}
			u := catImage(t, 4000)
			ud, _ := u.Digest()
			testenv.Push(t, addr+"/gc/app@"+ud.String(), u)
			doomed := catImage(t, 5000)
			dd := testenv.Push(t, addr+"/gc/app:doomed", doomed)
			if err := remote.Delete(catRef(t, addr+"/gc/app@"+dd.String())); err != nil {
				t.Fatal(err)
			}
			e := catImage(t, 600)
			testenv.Push(t, addr+"/gc/empty:x", e)
			if _, err := srv.Catalog().DeleteTag(ctx, "gc/empty", "x"); err != nil {
				t.Fatal(err)
			}

			res, err := srv.GC(ctx, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := blobsSize(t, doomed)
			if tc.extraBytes {
				want += blobsSize(t, u) + blobsSize(t, e)
			}
			if res.Bytes != want {
				t.Errorf("GC reports %d bytes, want %d", res.Bytes, want)
			}
			refs := map[string]string{
				"a": addr + "/gc/app:a", "sig": addr + "/gc/app@" + sig.String(), "multi": addr + "/gc/app:multi",
				"untagged": addr + "/gc/app@" + ud.String(),
			}
			for k, ref := range refs {
				gone := false
				for _, g := range tc.wantGone {
					gone = gone || g == k
				}
				err := pullable(t, ref)
				if gone && err == nil {
					t.Errorf("%s is still pullable", k)
				}
				if !gone && err != nil {
					t.Errorf("%s is not pullable after GC: %v", k, err)
				}
			}
			repos, err := srv.Catalog().Repositories(ctx)
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			for _, r := range repos {
				names[r.Name] = true
			}
			for _, r := range tc.wantRepos {
				if names[r] {
					t.Errorf("repository %s still listed", r)
				}
			}
			if !names["gc/app"] {
				t.Errorf("gc/app gone")
			}
			// A second GC finds nothing more to do.
			if !tc.opts.DryRun {
				again, err := srv.GC(ctx, tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				if again.Bytes != 0 || len(again.Blobs) != 0 {
					t.Errorf("second GC still removes %d blobs (%d bytes)", len(again.Blobs), again.Bytes)
				}
			}
		})
	}
}

func TestReadOnlyGate(t *testing.T) {
	addr, srv := testenv.Registry(t, registry.Options{})
	img := catImage(t, 100)
	testenv.Push(t, addr+"/gate/x:1", img)
	resume, err := srv.ReadOnly(context.Background(), "garbage collection")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.ReadOnly(context.Background(), "again"); err == nil {
		t.Error("a second ReadOnly while read-only succeeded")
	}
	tests := []struct {
		method, path string
		want         int
	}{
		{"POST", "/v2/gate/x/blobs/uploads/", 503},
		{"PUT", "/v2/gate/x/manifests/2", 503},
		{"DELETE", "/v2/gate/x/manifests/1", 503},
		{"GET", "/v2/gate/x/manifests/1", 200},
		{"HEAD", "/v2/gate/x/manifests/1", 200},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		req.Header.Set("Accept", string(types.DockerManifestSchema2))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
		if tc.want == 503 {
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"UNAVAILABLE"`) || !strings.Contains(string(body), "garbage collection") {
				t.Errorf("%s %s: Retry-After %q, body %s", tc.method, tc.path, resp.Header.Get("Retry-After"), body)
			}
		}
	}
	if _, err := srv.Catalog().DeleteTag(context.Background(), "gate/x", "1"); err == nil {
		t.Error("UI delete went through while read-only")
	}
	resume()
	testenv.Push(t, addr+"/gate/x:2", catImage(t, 100))
}

func TestCatalogFollowsTheRegistry(t *testing.T) {
	dir := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: dir})
	ctx := context.Background()
	if repos, err := srv.Catalog().Repositories(ctx); err != nil || len(repos) != 0 {
		t.Fatalf("fresh registry lists %v, %v", repos, err)
	}
	img := catImage(t, 2000)
	keep := catImage(t, 1500)
	testenv.Push(t, addr+"/follow/keep:1", keep)
	d := testenv.Push(t, addr+"/follow/me:1.0", img)
	testenv.Push(t, addr+"/follow/me:latest", img)
	if err := pullable(t, addr+"/follow/me:latest"); err != nil {
		t.Fatal(err)
	}
	sum, tags, err := srv.Catalog().Tags(ctx, "follow/me")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	size := m.Config.Size + m.Layers[0].Size
	if sum.Tags != 2 || sum.Size != size || len(tags) != 2 || tags[0].Digest.String() != d.String() || tags[0].Size != size {
		t.Errorf("after two pushes: %+v %+v, want 2 tags of %d bytes", sum, tags, size)
	}
	if time.Since(sum.LastPush) > time.Minute {
		t.Errorf("last push %s", sum.LastPush)
	}
	if err := remote.Delete(catRef(t, addr+"/follow/me@"+d.String())); err != nil {
		t.Fatal(err)
	}
	sum, _, err = srv.Catalog().Tags(ctx, "follow/me")
	if err != nil || sum.Tags != 0 {
		t.Errorf("after deleting the manifest: %+v, %v", sum, err)
	}
	// Events survive a restart, newest first.
	ev, n := srv.Events().Page(0, 10, nil)
	if n < 4 || ev[0].Action != "delete" || ev[0].Digest != digest.Digest(d.String()) {
		t.Fatalf("events: %d %+v", n, ev)
	}
	_, srv2 := testenv.Registry(t, registry.Options{DataDir: dir})
	ev2, n2 := srv2.Events().Page(0, 10, func(e registry.Event) bool { return e.Action == "push" })
	if n2 != 3 || ev2[0].Tag != "latest" || ev2[1].Tag != "1.0" {
		t.Errorf("push events after restart: %d %+v", n2, ev2)
	}
	// Sizes and dates after a restart come from the summary cache file.
	if _, err := os.Stat(filepath.Join(dir, "catalog-cache.jsonl")); err != nil {
		t.Errorf("no summary cache: %v", err)
	}
	if _, _, err := srv.Catalog().Tags(ctx, "follow/keep"); err != nil {
		t.Fatal(err)
	}
	km, _ := keep.Manifest()
	cf, _ := keep.ConfigFile()
	repos, err := srv2.Catalog().Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, ktags, err := srv2.Catalog().Tags(ctx, "follow/keep")
	if err != nil || len(repos) != 2 || len(ktags) != 1 || ktags[0].Size != km.Config.Size+km.Layers[0].Size || !ktags[0].Created.Equal(cf.Created.Time) {
		t.Errorf("after restart: repos %+v, tags %+v, %v", repos, ktags, err)
	}
}

func TestOfflineGCExcludesWrites(t *testing.T) {
	dir := t.TempDir()
	addr, _ := testenv.Registry(t, registry.Options{DataDir: dir})
	testenv.Push(t, addr+"/off/x:1", catImage(t, 100))
	// An offline GC holds the data dir's lock exclusively meanwhile.
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("an idle server holds the lock: %v", err)
	}
	resp, err := http.Post("http://"+addr+"/v2/off/x/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "offline garbage collection") {
		t.Errorf("push during offline GC: %d %s", resp.StatusCode, body)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	testenv.Push(t, addr+"/off/x:2", catImage(t, 100))
	res, err := registry.OfflineGC(context.Background(), registry.Options{DataDir: dir}, registry.GCOptions{})
	if err != nil || len(res.Blobs) != 0 {
		t.Errorf("offline GC beside an idle server: %+v %v", res, err)
	}
}

// TestGCEmptyStorage: GC on a registry that never had a repository (a
// fresh data dir) finds nothing to remove and does not fail.
func TestGCEmptyStorage(t *testing.T) {
	_, srv := testenv.Registry(t, registry.Options{})
	res, err := srv.GC(context.Background(), registry.GCOptions{RemoveUntagged: true, RemoveEmptyRepos: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != 0 || len(res.Blobs) != 0 {
		t.Errorf("GC of an empty storage removed %d blobs, %d bytes", len(res.Blobs), res.Bytes)
	}
}
