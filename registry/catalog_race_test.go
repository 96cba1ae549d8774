package registry

import (
	"context"
	"sync"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// pauseStat holds the first Stat of one path, after the storage answered
// it, until release is closed; reached is closed when it does.
type pauseStat struct {
	storagedriver.StorageDriver
	path    string
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (p *pauseStat) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	fi, err := p.StorageDriver.Stat(ctx, path)
	if path == p.path {
		p.once.Do(func() {
			close(p.reached)
			<-p.release
		})
	}
	return fi, err
}

// TestCatalogReloadDuringFirstLoad: a Reload (after a GC, a scrub, an
// offline change) that comes while the first load is reading storage is
// not lost: the load reads again, and the catalog does not keep listing
// a repository that was removed meanwhile.
func TestCatalogReloadDuringFirstLoad(t *testing.T) {
	ctx := context.Background()
	mem := inmemory.New()
	for _, repo := range []string{"race/kept", "race/gone"} {
		// A repository without tags: the load's last read of it is the
		// Stat that checks it still exists.
		if err := mem.PutContent(ctx, repoPath(repo)+"/_manifests/revisions/.keep", nil); err != nil {
			t.Fatal(err)
		}
	}
	drv := &pauseStat{StorageDriver: mem, path: repoPath("race/gone"), reached: make(chan struct{}), release: make(chan struct{})}
	c, err := newCatalog(ctx, drv, "")
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		repos []Repository
		err   error
	}
	first := make(chan result, 1)
	go func() {
		repos, err := c.Repositories(ctx)
		first <- result{repos, err}
	}()
	<-drv.reached // the load has read race/gone as present
	if err := mem.Delete(ctx, repoPath("race/gone")); err != nil {
		t.Fatal(err)
	}
	c.Reload() // what a GC that removed it does
	close(drv.release)

	names := func(rs []Repository) []string {
		var n []string
		for _, r := range rs {
			n = append(n, r.Name)
		}
		return n
	}
	r := <-first
	if r.err != nil {
		t.Fatal(r.err)
	}
	if n := names(r.repos); len(n) != 1 || n[0] != "race/kept" {
		t.Errorf("the load overtaken by a Reload lists %q; want only race/kept", n)
	}
	again, err := c.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := names(again); len(n) != 1 || n[0] != "race/kept" {
		t.Errorf("after the load, the catalog lists %q; want only race/kept", n)
	}
}
