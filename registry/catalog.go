package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Repository summarises one repository for the catalog.
type Repository struct {
	Name string `json:"name"`
	// Tags is the number of tags; 0 marks an empty repository.
	Tags int `json:"tags"`
	// Size is the compressed size of the distinct blobs its tags reference.
	Size int64 `json:"size"`
	// LastPush is when a tag of the repository was last written.
	LastPush time.Time `json:"last_push,omitzero"`
}

// Tag is one tag of a repository and the manifest it points to.
type Tag struct {
	Name   string        `json:"name"`
	Digest digest.Digest `json:"digest"`
	// Pushed is when the tag was last written.
	Pushed time.Time `json:"pushed,omitzero"`
	*Summary
}

// Catalog reads the registry's storage in-process through distribution's
// storage API. It caches manifest summaries by digest and keeps an index of
// repositories and tags that the registry's own request stream keeps fresh
// (see Touch); the first read after start builds it from storage, or, for
// a server's catalog, from the snapshot its last run left
// (catalog_snapshot.go).
type Catalog struct {
	ns     distribution.Namespace
	driver driver.StorageDriver
	gate   *gate // nil: no runtime read-only mode (offline use)
	// onChange is the server's bookkeeping of manifest changes
	// (changes.go); nil offline.
	onChange *changes
	// descriptors is the Redis blob descriptor cache to clear of what GC
	// and deletes remove (descriptors.go); nil: none.
	descriptors *descriptorCache

	// offlineMark is offlineChangePath of a server's data dir ("" for an
	// offline catalog): when its content differs from offlineSeen, an
	// offline tool changed the storage and the index is reloaded.
	offlineMark string

	// snap keeps the index across restarts (catalog_snapshot.go); nil:
	// not kept (an offline catalog).
	snap   *snapshotFiles
	saveMu sync.Mutex // one SaveIndex at a time
	// log receives what the catalog does on its own (snapshots,
	// verification); nil: nothing.
	log *slog.Logger

	mu      sync.Mutex // guards the fields below
	loaded  bool
	loading chan struct{}
	// gen counts Reloads: a load that a Reload overtook reads again
	// rather than installing what it read before.
	gen         uint64
	offlineSeen string
	repos       map[string]*repoEntry
	names       []string // sorted keys of repos
	sorted      bool
	sums        map[digest.Digest]*Summary
	sumsLock    sync.Mutex
	// Under mu too: version counts changes to the index, savedVersion
	// is the one the snapshot holds, touchSeq counts Touches (see
	// repoEntry.touched).
	version, savedVersion, touchSeq uint64
	logBytes                        int64 // size of the change log
	// snapTried: the first load looked for a snapshot (later loads, after
	// a Reload, read storage). fromSnapshot: the index came from one and
	// is not verified yet; snapLoaded is told when that happens.
	snapTried, fromSnapshot bool
	snapLoaded              chan struct{}
	// cache is <data>/catalog-cache.jsonl: summaries by digest, kept across
	// restarts (content is immutable, so an entry never goes stale).
	cache      string
	cacheOnce  sync.Once
	cacheReady chan struct{} // closed when the cache file is read
	// cacheMu serialises appends to the cache file and its compaction;
	// cacheLines counts its lines (under cacheMu).
	cacheMu    sync.Mutex
	cacheLines int
}

type repoEntry struct {
	name  string
	tags  map[string]tagEntry
	dirty bool            // re-list every tag
	gone  bool            // the repository does not exist (any more)
	stale map[string]bool // re-read these tags only
	sum   Repository
	// touched is the catalog's touchSeq at the last Touch of the
	// repository: a verification leaves alone what changed after it began.
	touched uint64
	// refreshing counts refreshes reading it now: a snapshot taken
	// meanwhile marks it dirty.
	refreshing int
}

type tagEntry struct {
	digest digest.Digest
	pushed time.Time
}

// NewCatalog opens the filesystem storage under dataDir/storage, for
// offline use (a server's catalog reads the server's storage: see
// Server.Catalog).
func NewCatalog(ctx context.Context, dataDir string) (*Catalog, error) {
	if _, err := os.Stat(filepath.Join(dataDir, "storage")); err != nil {
		return nil, fmt.Errorf("no registry storage in %s: %w", dataDir, err)
	}
	st, err := openBackend(ctx, Options{DataDir: dataDir})
	if err != nil {
		return nil, err
	}
	return newCatalog(ctx, st.driver, filepath.Join(dataDir, "catalog-cache.jsonl"))
}

// newCatalog reads the storage behind drv; cache is the summary cache
// file ("" for none).
func newCatalog(ctx context.Context, drv driver.StorageDriver, cache string) (*Catalog, error) {
	ns, err := storage.NewRegistry(ctx, drv, storage.EnableDelete)
	if err != nil {
		return nil, fmt.Errorf("opening storage: %w", err)
	}
	return &Catalog{ns: ns, driver: drv, repos: map[string]*repoEntry{}, sums: map[digest.Digest]*Summary{},
		cache: cache, cacheReady: make(chan struct{}), snapLoaded: make(chan struct{}, 1)}, nil
}

// extras is the per-Server state of the catalog, events and read-only
// gate. It holds no pointer to its Server.
// ErrNotFound is returned for a repository, tag or manifest that does not exist.
var ErrNotFound = errors.New("not found")

// Touch tells the catalog that a tag of repo changed (tag "" = anything in
// repo may have changed). The next read refreshes only that.
func (c *Catalog) Touch(repo, tag string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.touchLocked(repo, tag, true)
}

// touchLocked is Touch with c.mu held; log adds the change to the change
// log (a replay of the log does not).
func (c *Catalog) touchLocked(repo, tag string, log bool) {
	c.touchSeq++
	c.version++
	if log {
		c.logChange("R " + repo + " " + tag + "\n")
	}
	e, ok := c.repos[repo]
	if !ok {
		e = &repoEntry{name: repo, tags: map[string]tagEntry{}, dirty: true}
		c.repos[repo] = e
		c.sorted = false
	}
	e.touched = c.touchSeq
	if tag == "" {
		e.dirty = true
		return
	}
	if e.stale == nil {
		e.stale = map[string]bool{}
	}
	e.stale[tag] = true
}

// Warm builds the index now, from the snapshot when there is one (a
// server calls it at start so that the first page view after a restart
// finds it ready).
func (c *Catalog) Warm(ctx context.Context) error { return c.load(ctx) }

// Reload drops the repository index (not the digest cache); the next read
// rebuilds it from storage.
func (c *Catalog) Reload() {
	c.mu.Lock()
	c.gen++
	c.version++
	c.loaded = false
	c.fromSnapshot = false
	c.repos = map[string]*repoEntry{}
	c.names = nil
	c.logChange("*\n") // the snapshot no longer tells what storage holds
	c.mu.Unlock()
}

// load builds the index on first use.
func (c *Catalog) load(ctx context.Context) error {
	c.mu.Lock()
	if c.loaded {
		c.mu.Unlock()
		return nil
	}
	if ch := c.loading; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		return c.load(ctx)
	}
	ch := make(chan struct{})
	c.loading = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.loading = nil
		close(ch)
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		gen := c.gen
		try := c.snap != nil && !c.snapTried
		c.snapTried = true
		c.mu.Unlock()
		if try {
			ok, why := c.loadSnapshot(gen)
			if ok {
				select {
				case c.snapLoaded <- struct{}{}:
				default:
				}
				c.startCache() // for the tags pages and the verification
				return nil
			}
			if why != nil && c.log != nil {
				c.log.Info("catalog index: reading storage, not the snapshot", "reason", why)
			}
		}
		c.startCache()
		select {
		case <-c.cacheReady:
		case <-ctx.Done():
			return ctx.Err()
		}
		entries, err := c.readAll(ctx)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if c.gen != gen {
			// Reloaded meanwhile (a GC, a scrub, an offline change): what
			// was read may predate the change. Read again.
			c.mu.Unlock()
			continue
		}
		for _, e := range entries {
			if _, ok := c.repos[e.name]; !ok { // a Touch that came in meanwhile wins
				c.repos[e.name] = e
			}
		}
		c.sorted = false
		c.loaded = true
		c.version++
		c.mu.Unlock()
		return nil
	}
}

// readAll reads every repository from storage.
func (c *Catalog) readAll(ctx context.Context) ([]*repoEntry, error) {
	var names []string
	err := c.ns.(distribution.RepositoryEnumerator).Enumerate(ctx, func(name string) error {
		names = append(names, name)
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return nil, fmt.Errorf("listing repositories: %w", err)
	}
	entries := make([]*repoEntry, len(names))
	err = parallel(ctx, len(names), func(i int) error {
		e := &repoEntry{name: names[i], tags: map[string]tagEntry{}, dirty: true}
		entries[i] = e
		return c.refresh(ctx, e)
	})
	if err != nil {
		return nil, err
	}
	return entries, nil
}

// offlineChangePath is the file an offline tool (OfflineGC) rewrites
// after it changed the data dir's storage; a server running on the data
// dir reloads its catalog index when it sees a new content.
func offlineChangePath(dataDir string) string { return filepath.Join(dataDir, "offline-change") }

// markOfflineChange tells a server running on dataDir that its storage
// was changed behind its back.
func markOfflineChange(dataDir string) error {
	if err := writeFileAtomic(offlineChangePath(dataDir), []byte(randomID()+"\n")); err != nil {
		return fmt.Errorf("telling a server on %s of the change: %w", dataDir, err)
	}
	return nil
}

// followOffline reloads the index when an offline tool changed the
// storage since the last look.
func (c *Catalog) followOffline() {
	if c.offlineMark == "" {
		return
	}
	b, _ := os.ReadFile(c.offlineMark) // none yet: ""
	c.mu.Lock()
	changed := string(b) != c.offlineSeen
	c.offlineSeen = string(b)
	c.mu.Unlock()
	if changed {
		c.Reload()
	}
}

// watchOffline makes the catalog follow offline changes to dataDir from
// now on.
func (c *Catalog) watchOffline(dataDir string) {
	c.offlineMark = offlineChangePath(dataDir)
	b, _ := os.ReadFile(c.offlineMark)
	c.mu.Lock()
	c.offlineSeen = string(b)
	c.mu.Unlock()
}

// parallel runs f(0..n-1) on a few goroutines and returns the first error.
func parallel(ctx context.Context, n int, f func(i int) error) error {
	workers := min(16, n)
	next := make(chan int)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	go func() {
		for range next {
		}
	}()
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}

// fresh returns the entries of the index, refreshing those touched since
// the last read. Call without c.mu held.
func (c *Catalog) fresh(ctx context.Context, only string) ([]*repoEntry, error) {
	c.followOffline()
	c.mu.Lock()
	loaded := c.loaded
	if !loaded && only != "" {
		// One repository's page need not wait for the whole index.
		if _, ok := c.repos[only]; !ok {
			c.repos[only] = &repoEntry{name: only, tags: map[string]tagEntry{}, dirty: true}
			c.sorted = false
		}
	}
	c.mu.Unlock()
	if !loaded && only == "" {
		if err := c.load(ctx); err != nil {
			return nil, err
		}
	}
	c.startCache()
	c.mu.Lock()
	var work []*repoEntry
	if only != "" {
		if e, ok := c.repos[only]; ok && (e.dirty || len(e.stale) > 0) {
			work = append(work, e)
		}
	} else {
		for _, e := range c.repos {
			if e.dirty || len(e.stale) > 0 {
				work = append(work, e)
			}
		}
	}
	c.mu.Unlock()
	err := parallel(ctx, len(work), func(i int) error { return c.refresh(ctx, work[i]) })
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range work {
		if e.gone && c.repos[e.name] == e {
			delete(c.repos, e.name)
			c.sorted = false
		}
	}
	if !c.sorted {
		c.names = c.names[:0]
		for n := range c.repos {
			c.names = append(c.names, n)
		}
		sort.Strings(c.names)
		c.sorted = true
	}
	if only != "" {
		if e, ok := c.repos[only]; ok {
			return []*repoEntry{e}, nil
		}
		return nil, nil
	}
	out := make([]*repoEntry, 0, len(c.names))
	for _, n := range c.names {
		out = append(out, c.repos[n])
	}
	return out, nil
}

// refresh re-reads what changed in e from storage and recomputes its summary.
func (c *Catalog) refresh(ctx context.Context, e *repoEntry) error {
	c.mu.Lock()
	dirty, stale := e.dirty, e.stale
	e.dirty, e.stale = false, nil
	old := e.tags
	e.refreshing++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		e.refreshing--
		c.mu.Unlock()
	}()

	repo, err := c.repository(ctx, e.name)
	if err != nil {
		return err
	}
	tags := make(map[string]tagEntry, len(old))
	var names []string
	if dirty {
		names, err = repo.Tags(ctx).All(ctx)
		if err != nil && !isRepoUnknown(err) && !isPathNotFound(err) {
			return fmt.Errorf("listing tags of %s: %w", e.name, err)
		}
		if err != nil {
			// No tags directory: does the repository exist at all?
			_, serr := c.driver.Stat(ctx, repoPath(e.name))
			c.mu.Lock()
			e.gone = isPathNotFound(serr)
			c.mu.Unlock()
		}
	} else {
		for n, t := range old {
			tags[n] = t
		}
		for n := range stale {
			delete(tags, n)
			names = append(names, n)
		}
	}
	for _, n := range names {
		t, err := c.readTag(ctx, repo, e.name, n)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		tags[n] = t
	}
	// Summaries of every tagged manifest (cache hits after the first time).
	blobs := map[digest.Digest]int64{}
	var last time.Time
	for n, t := range tags {
		sum, err := c.summary(ctx, repo, t.digest)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				delete(tags, n)
				continue
			}
			return err
		}
		for d, sz := range sum.layers {
			blobs[d] = sz
		}
		if t.pushed.After(last) {
			last = t.pushed
		}
	}
	var size int64
	for _, sz := range blobs {
		size += sz
	}
	c.mu.Lock()
	e.tags = tags
	e.sum = Repository{Name: e.name, Tags: len(tags), Size: size, LastPush: last}
	c.version++
	c.mu.Unlock()
	return nil
}

func (c *Catalog) readTag(ctx context.Context, repo distribution.Repository, name, tag string) (tagEntry, error) {
	desc, err := repo.Tags(ctx).Get(ctx, tag)
	if err != nil {
		var unknown distribution.ErrTagUnknown
		if errors.As(err, &unknown) || isPathNotFound(err) {
			return tagEntry{}, ErrNotFound
		}
		return tagEntry{}, fmt.Errorf("reading tag %s:%s: %w", name, tag, err)
	}
	t := tagEntry{digest: desc.Digest}
	// The tag link's modification time is when the tag was last pushed.
	if fi, err := c.driver.Stat(ctx, tagLinkPath(name, tag)); err == nil {
		t.pushed = fi.ModTime().UTC()
	}
	return t, nil
}

func (c *Catalog) repository(ctx context.Context, name string) (distribution.Repository, error) {
	named, err := reference.WithName(name)
	if err != nil {
		return nil, fmt.Errorf("repository name %q: %v: %w", name, err, ErrNotFound)
	}
	r, err := c.ns.Repository(ctx, named)
	if err != nil {
		return nil, fmt.Errorf("opening repository %s: %w", name, err)
	}
	return r, nil
}

// rawManifest is the union of image manifest and index fields labreg reads.
// Repositories returns every repository, sorted by name.
func (c *Catalog) Repositories(ctx context.Context) ([]Repository, error) {
	entries, err := c.fresh(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]Repository, 0, len(entries))
	c.mu.Lock()
	for _, e := range entries {
		out = append(out, e.sum)
	}
	c.mu.Unlock()
	return out, nil
}

// Tags returns repo's summary and its tags in no particular order.
func (c *Catalog) Tags(ctx context.Context, repo string) (Repository, []Tag, error) {
	entries, err := c.fresh(ctx, repo)
	if err != nil {
		return Repository{}, nil, err
	}
	if len(entries) == 0 {
		return Repository{}, nil, fmt.Errorf("repository %s: %w", repo, ErrNotFound)
	}
	e := entries[0]
	c.mu.Lock()
	sum := e.sum
	tags := make([]Tag, 0, len(e.tags))
	for n, t := range e.tags {
		tags = append(tags, Tag{Name: n, Digest: t.digest, Pushed: t.pushed})
	}
	c.mu.Unlock()
	missing := false
	c.sumsLock.Lock()
	for i := range tags {
		tags[i].Summary = c.sums[tags[i].Digest]
		missing = missing || tags[i].Summary == nil
	}
	c.sumsLock.Unlock()
	if missing {
		// An index from a snapshot has its summaries once the cache file
		// is read; one the cache lacks is read from storage.
		if err := c.addSummaries(ctx, repo, tags); err != nil {
			return Repository{}, nil, err
		}
		kept := tags[:0]
		for _, t := range tags {
			if t.Summary != nil {
				kept = append(kept, t)
			}
		}
		if len(kept) < len(tags) { // a tag whose manifest is gone
			c.Touch(repo, "")
		}
		tags = kept
	}
	return sum, tags, nil
}

// addSummaries sets the Summary of each of tags that has none, from the
// cache file once it is read, else from storage; it stays nil for a
// manifest that is gone.
func (c *Catalog) addSummaries(ctx context.Context, repo string, tags []Tag) error {
	c.startCache()
	select {
	case <-c.cacheReady:
	case <-ctx.Done():
		return ctx.Err()
	}
	r, err := c.repository(ctx, repo)
	if err != nil {
		return err
	}
	for i := range tags {
		if tags[i].Summary != nil {
			continue
		}
		s, err := c.summary(ctx, r, tags[i].Digest)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		tags[i].Summary = s
	}
	return nil
}

// Resolve returns the digest a tag or digest reference names in repo.
func (c *Catalog) Resolve(ctx context.Context, repo, ref string) (digest.Digest, error) {
	if d, err := digest.Parse(ref); err == nil {
		return d, nil
	}
	r, err := c.repository(ctx, repo)
	if err != nil {
		return "", err
	}
	t, err := c.readTag(ctx, r, repo, ref)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", fmt.Errorf("tag %s:%s: %w", repo, ref, ErrNotFound)
		}
		return "", err
	}
	return t.digest, nil
}

// TagsOf returns the tags of repo that point to dgst, sorted.
func (c *Catalog) TagsOf(ctx context.Context, repo string, dgst digest.Digest) ([]string, error) {
	_, tags, err := c.Tags(ctx, repo)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tags {
		if t.Digest == dgst {
			out = append(out, t.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func isPathNotFound(err error) bool {
	var p driver.PathNotFoundError
	return errors.As(err, &p)
}

func isRepoUnknown(err error) bool {
	var r distribution.ErrRepositoryUnknown
	return errors.As(err, &r)
}
