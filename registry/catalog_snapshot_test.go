package registry_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// repoNames lists the catalog's repositories, and the digest each
// repository's tag "1" points to.
func repoNames(t *testing.T, c *registry.Catalog) ([]string, map[string]digest.Digest) {
	t.Helper()
	ctx := context.Background()
	repos, err := c.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	tag1 := map[string]digest.Digest{}
	for _, r := range repos {
		names = append(names, r.Name)
		_, tags, err := c.Tags(ctx, r.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range tags {
			if tg.Name == "1" {
				tag1[r.Name] = tg.Digest
				if tg.Summary == nil || tg.Size == 0 {
					t.Errorf("%s:1 has no summary: %+v", r.Name, tg)
				}
			}
		}
	}
	return names, tag1
}

// removeRepo deletes a repository from storage behind the server's back.
func removeRepo(t *testing.T, dir, repo string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(dir, "storage/docker/registry/v2/repositories", repo)); err != nil {
		t.Fatal(err)
	}
}

func lineCount(t *testing.T, p string) int {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		n++
	}
	return n
}

// TestCatalogIndexAcrossRestarts (issue 21): a server's catalog index is
// saved at a clean stop and read back at the next start instead of
// storage; what changed after the last save is replayed from the change
// log (a crash); a verification against storage corrects, within
// seconds, what neither could know, and compacts the summary cache; a
// reload (GC) or an offline tool's change makes the next start read
// storage.
func TestCatalogIndexAcrossRestarts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	addr, srv, stop := testenv.StoppableRegistry(t, registry.Options{DataDir: dir})
	for _, repo := range []string{"keep/app", "gone/app", "moved/app"} {
		testenv.Push(t, addr+"/"+repo+":1", catImage(t, 300))
	}
	if names, _ := repoNames(t, srv.Catalog()); len(names) != 3 {
		t.Fatalf("the catalog lists %q", names)
	}
	stop()
	if _, err := os.Stat(filepath.Join(dir, "catalog-index")); err != nil {
		t.Fatalf("no snapshot after a clean stop: %v", err)
	}
	for _, p := range []string{"catalog-index.log", "catalog-index.log.prev"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s left after a clean stop", p)
		}
	}

	// Behind the registry's back: a repository goes, and the summary
	// cache holds lines of manifests long gone.
	removeRepo(t, dir, "gone/app")
	cache := filepath.Join(dir, "catalog-cache.jsonl")
	f, err := os.OpenFile(cache, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		fmt.Fprintf(f, `{"d":%q,"s":{"media_type":"application/vnd.oci.image.manifest.v1+json","size":1}}`+"\n", digest.FromString(fmt.Sprint(i)))
	}
	f.Close()

	addr, srv, _ = testenv.StoppableRegistry(t, registry.Options{DataDir: dir})
	names, _ := repoNames(t, srv.Catalog())
	if !slices.Contains(names, "gone/app") {
		t.Errorf("the restarted server lists %q at once: not the snapshot, which has gone/app", names)
	}
	waitFor(t, 20*time.Second, "the verification to drop gone/app", func() bool {
		names, _ := repoNames(t, srv.Catalog())
		return slices.Equal(names, []string{"keep/app", "moved/app"})
	})
	waitFor(t, 10*time.Second, "the summary cache to be compacted", func() bool {
		return lineCount(t, cache) == 2
	})

	// A crash: what a push changed since the last save is in the log.
	if err := srv.Catalog().SaveIndex(); err != nil {
		t.Fatal(err)
	}
	moved := testenv.Push(t, addr+"/moved/app:1", catImage(t, 400))
	testenv.Push(t, addr+"/new/app:1", catImage(t, 500))
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	_, after, _ := testenv.StoppableRegistry(t, registry.Options{DataDir: crashed})
	names, tag1 := repoNames(t, after.Catalog())
	if !slices.Equal(names, []string{"keep/app", "moved/app", "new/app"}) || tag1["moved/app"].String() != moved.String() {
		t.Errorf("after a crash the first read lists %q, moved/app:1 = %s; want new/app and moved/app:1 = %s", names, tag1["moved/app"], moved)
	}

	// A GC reloads the index: the next start reads storage, not the snapshot.
	if _, err := srv.GC(ctx, registry.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	gcd := t.TempDir()
	if err := os.CopyFS(gcd, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	removeRepo(t, gcd, "keep/app")
	_, after, _ = testenv.StoppableRegistry(t, registry.Options{DataDir: gcd})
	if names, _ := repoNames(t, after.Catalog()); slices.Contains(names, "keep/app") {
		t.Errorf("after a GC and a crash the first read lists %q: the snapshot, not storage", names)
	}

	// An offline GC while no server runs: likewise.
	off := t.TempDir()
	if err := os.CopyFS(off, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"catalog-index.log", "catalog-index.log.prev"} {
		os.Remove(filepath.Join(off, p)) // as a clean stop leaves it
	}
	if _, err := registry.OfflineGC(ctx, registry.Options{DataDir: off}, registry.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	removeRepo(t, off, "keep/app")
	_, after, _ = testenv.StoppableRegistry(t, registry.Options{DataDir: off})
	if names, _ := repoNames(t, after.Catalog()); slices.Contains(names, "keep/app") {
		t.Errorf("after an offline GC the first read lists %q: the snapshot, not storage", names)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "catalog-index")); !strings.HasPrefix(string(b), "labreg-catalog-index 1\nstore filesystem\n") {
		t.Errorf("snapshot starts %q", b[:min(len(b), 60)])
	}
}
