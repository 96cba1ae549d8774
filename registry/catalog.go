package registry

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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

// Summary is what the catalog knows about one manifest. Content is
// immutable, so summaries are cached by digest for the process lifetime.
type Summary struct {
	MediaType    string `json:"media_type"`
	ArtifactType string `json:"artifact_type,omitempty"`
	// Size is the compressed size: config and layers of an image, the
	// distinct config and layer blobs of every child of an index.
	Size int64 `json:"size"`
	// Created comes from the image config (the newest child of an index).
	Created time.Time `json:"created,omitzero"`
	// Platforms lists os/arch[/variant] of an image or of each child of an index.
	Platforms []string `json:"platforms,omitempty"`
	// Subject is the manifest this one refers to (signatures, SBOMs).
	Subject digest.Digest `json:"subject,omitempty"`

	layers map[digest.Digest]int64 // the config and layer blobs it references (of every child of an index)
}

// IsIndex reports whether the manifest is an image index or manifest list.
func (s *Summary) IsIndex() bool {
	return s != nil && (s.MediaType == ocispec.MediaTypeImageIndex || s.MediaType == mediaTypeManifestList)
}

const mediaTypeManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"

// Catalog reads the registry's storage in-process through distribution's
// storage API. It caches manifest summaries by digest and keeps an index of
// repositories and tags that the registry's own request stream keeps fresh
// (see Touch); the first read after start builds it from storage.
type Catalog struct {
	ns     distribution.Namespace
	driver driver.StorageDriver
	gate   *gate // nil: no runtime read-only mode (offline use)
	// onChange is the server's bookkeeping of manifest changes
	// (changes.go); nil offline.
	onChange *changes

	mu       sync.Mutex // guards the fields below
	loaded   bool
	loading  chan struct{}
	repos    map[string]*repoEntry
	names    []string // sorted keys of repos
	sorted   bool
	sums     map[digest.Digest]*Summary
	sumsLock sync.Mutex
	// cache is <data>/catalog-cache.jsonl: summaries by digest, kept across
	// restarts (content is immutable, so an entry never goes stale).
	cache      string
	cacheOnce  sync.Once
	cacheReady chan struct{} // closed when the cache file is read
}

// cachedSummary is one line of the summary cache file.
type cachedSummary struct {
	Digest digest.Digest           `json:"d"`
	S      *Summary                `json:"s"`
	Layers map[digest.Digest]int64 `json:"l"`
}

// startCache starts reading the summary cache file, once. Building the
// whole index waits for it; one repository's page does not (reading its
// manifests is quicker than reading every summary).
func (c *Catalog) startCache() {
	c.cacheOnce.Do(func() {
		go func() {
			c.loadCache()
			close(c.cacheReady)
		}()
	})
}

// loadCache reads the summary cache file.
func (c *Catalog) loadCache() {
	f, err := os.Open(c.cache)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	read := map[digest.Digest]*Summary{}
	for sc.Scan() {
		var cs cachedSummary
		if json.Unmarshal(sc.Bytes(), &cs) != nil || cs.S == nil || cs.Digest.Validate() != nil {
			continue // a torn last line after a crash
		}
		cs.S.layers = cs.Layers
		read[cs.Digest] = cs.S
	}
	c.sumsLock.Lock()
	defer c.sumsLock.Unlock()
	for d, s := range read {
		if _, ok := c.sums[d]; !ok {
			c.sums[d] = s
		}
	}
}

// saveSummary appends one summary to the cache file; failures only cost
// the next start a re-read.
func (c *Catalog) saveSummary(d digest.Digest, s *Summary) {
	b, err := json.Marshal(cachedSummary{Digest: d, S: s, Layers: s.layers})
	if err != nil || c.cache == "" {
		return
	}
	_ = appendLine(c.cache, append(b, '\n'))
}

type repoEntry struct {
	name  string
	tags  map[string]tagEntry
	dirty bool            // re-list every tag
	gone  bool            // the repository does not exist (any more)
	stale map[string]bool // re-read these tags only
	sum   Repository
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
		cache: cache, cacheReady: make(chan struct{})}, nil
}

// extras is the per-Server state of the catalog, events and read-only
// gate. It holds no pointer to its Server.
type extras struct {
	catalog *Catalog
	events  *EventLog
	changes *changes // what follows a manifest change (changes.go)
	gate    *gate
	dataDir string
	lock    *os.File // <data>/.lock, locked shared while writes run (see gate)
	// serveLock is <data>/.serve.lock, locked shared until Serve returns.
	serveLock *os.File
}

// newExtras opens the catalog, event log and data-dir lock of a server.
// The lock file is closed when the Server is garbage collected. A catalog
// that cannot be opened fails the server's start (a nil catalog would fail
// the UI later).
func newExtras(s *Server) (*extras, error) {
	if s.store == nil {
		return nil, errors.New("registry: no storage")
	}
	cat, err := newCatalog(context.Background(), s.store.driver, filepath.Join(s.opts.DataDir, "catalog-cache.jsonl"))
	if err != nil {
		return nil, err
	}
	e := &extras{catalog: cat, gate: newGate(), dataDir: s.opts.DataDir}
	cat.gate = e.gate
	e.events = openEventLog(s.opts.DataDir, s.log)
	e.changes = &changes{drv: s.store.driver, idx: s.referrerIndex(), catalog: cat, events: e.events, log: s.log}
	cat.onChange = e.changes
	if f, err := os.OpenFile(filepath.Join(s.opts.DataDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644); err == nil {
		e.lock = f
		e.gate.lock = f
		runtime.AddCleanup(s, func(f *os.File) { f.Close() }, f)
	}
	// <data>/.serve.lock, held shared for the server's life: ServerRunning
	// tells an offline tool that a server uses the data dir.
	if f, err := os.OpenFile(filepath.Join(s.opts.DataDir, ".serve.lock"), os.O_RDWR|os.O_CREATE, 0o644); err == nil {
		if syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB) == nil {
			e.serveLock = f // closed when Serve returns
			runtime.AddCleanup(s, func(f *os.File) { f.Close() }, f)
		} else {
			f.Close()
		}
	}
	return e, nil
}

// ServerRunning reports whether a labreg server (in any process) has the
// data dir open: it holds <data>/.serve.lock shared while it lives.
func ServerRunning(dataDir string) bool {
	f, err := os.Open(filepath.Join(dataDir, ".serve.lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// Catalog returns the in-process view of this server's storage that the
// web UI reads.
func (s *Server) Catalog() *Catalog { return s.extras.catalog }

// Events returns this server's push/pull/delete history.
func (s *Server) Events() *EventLog { return s.extras.events }

// DataDir returns the data directory.
func (s *Server) DataDir() string { return s.opts.DataDir }

// ErrNotFound is returned for a repository, tag or manifest that does not exist.
var ErrNotFound = errors.New("not found")

// Touch tells the catalog that a tag of repo changed (tag "" = anything in
// repo may have changed). The next read refreshes only that.
func (c *Catalog) Touch(repo, tag string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.repos[repo]
	if !ok {
		e = &repoEntry{name: repo, tags: map[string]tagEntry{}, dirty: true}
		c.repos[repo] = e
		c.sorted = false
		return
	}
	if tag == "" {
		e.dirty = true
		return
	}
	if e.stale == nil {
		e.stale = map[string]bool{}
	}
	e.stale[tag] = true
}

// Warm builds the index now (a server calls it at start so that the first
// page view after a restart finds it ready).
func (c *Catalog) Warm(ctx context.Context) error { return c.load(ctx) }

// Reload drops the repository index (not the digest cache); the next read
// rebuilds it from storage.
func (c *Catalog) Reload() {
	c.mu.Lock()
	c.loaded = false
	c.repos = map[string]*repoEntry{}
	c.names = nil
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
	c.startCache()
	select {
	case <-c.cacheReady:
	case <-ctx.Done():
		return ctx.Err()
	}

	var names []string
	err := c.ns.(distribution.RepositoryEnumerator).Enumerate(ctx, func(name string) error {
		names = append(names, name)
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return fmt.Errorf("listing repositories: %w", err)
	}
	entries := make([]*repoEntry, len(names))
	err = parallel(ctx, len(names), func(i int) error {
		e := &repoEntry{name: names[i], tags: map[string]tagEntry{}, dirty: true}
		entries[i] = e
		return c.refresh(ctx, e)
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	for _, e := range entries {
		if _, ok := c.repos[e.name]; !ok { // a Touch that came in meanwhile wins
			c.repos[e.name] = e
		}
	}
	c.sorted = false
	c.loaded = true
	c.mu.Unlock()
	return nil
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
	c.startCache()
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
	c.mu.Unlock()

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
type rawManifest struct {
	MediaType    string               `json:"mediaType"`
	ArtifactType string               `json:"artifactType"`
	Config       ocispec.Descriptor   `json:"config"`
	Layers       []ocispec.Descriptor `json:"layers"`
	Manifests    []ocispec.Descriptor `json:"manifests"`
	Subject      *ocispec.Descriptor  `json:"subject"`
	Annotations  map[string]string    `json:"annotations"`
}

func (c *Catalog) readManifest(ctx context.Context, repo distribution.Repository, dgst digest.Digest) (*rawManifest, []byte, error) {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("opening manifests of %s: %w", repo.Named().Name(), err)
	}
	m, err := ms.Get(ctx, dgst)
	if err != nil {
		var unknown distribution.ErrManifestUnknownRevision
		if errors.As(err, &unknown) || isPathNotFound(err) {
			return nil, nil, fmt.Errorf("manifest %s@%s: %w", repo.Named().Name(), dgst, ErrNotFound)
		}
		return nil, nil, fmt.Errorf("reading manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	mt, payload, err := m.Payload()
	if err != nil {
		return nil, nil, fmt.Errorf("reading manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	var raw rawManifest
	if err := json.Unmarshal(payload, &raw); err != nil {
		return nil, nil, fmt.Errorf("decoding manifest %s@%s: %w", repo.Named().Name(), dgst, err)
	}
	if raw.MediaType == "" {
		raw.MediaType = mt
	}
	return &raw, payload, nil
}

// imageConfig is the part of an image config labreg shows.
type imageConfig struct {
	Created      *time.Time          `json:"created"`
	Architecture string              `json:"architecture"`
	OS           string              `json:"os"`
	Variant      string              `json:"variant"`
	Config       ocispec.ImageConfig `json:"config"`
	History      []ocispec.History   `json:"history"`
}

func isImageConfig(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == "application/vnd.docker.container.image.v1+json"
}

func (c *Catalog) readConfig(ctx context.Context, repo distribution.Repository, desc ocispec.Descriptor) (*imageConfig, error) {
	b, err := repo.Blobs(ctx).Get(ctx, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading config %s of %s: %w", desc.Digest, repo.Named().Name(), err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config %s of %s: %w", desc.Digest, repo.Named().Name(), err)
	}
	return &cfg, nil
}

// summary returns the cached summary of dgst, reading it from repo on a miss.
func (c *Catalog) summary(ctx context.Context, repo distribution.Repository, dgst digest.Digest) (*Summary, error) {
	c.sumsLock.Lock()
	s, ok := c.sums[dgst]
	c.sumsLock.Unlock()
	if ok {
		return s, nil
	}
	raw, _, err := c.readManifest(ctx, repo, dgst)
	if err != nil {
		return nil, err
	}
	s = &Summary{MediaType: raw.MediaType, ArtifactType: raw.ArtifactType,
		layers: map[digest.Digest]int64{}}
	if raw.Subject != nil {
		s.Subject = raw.Subject.Digest
	}
	if len(raw.Manifests) > 0 || s.IsIndex() {
		for _, child := range raw.Manifests {
			cs, err := c.summary(ctx, repo, child.Digest)
			if errors.Is(err, ErrNotFound) { // an index may name absent children
				continue
			}
			if err != nil {
				return nil, err
			}
			for d, sz := range cs.layers {
				s.layers[d] = sz
			}
			if p := child.Platform; p != nil && p.OS != "unknown" {
				s.Platforms = append(s.Platforms, platformString(p.OS, p.Architecture, p.Variant))
			}
			if cs.Created.After(s.Created) {
				s.Created = cs.Created
			}
		}
	} else {
		if raw.Config.Digest != "" {
			s.layers[raw.Config.Digest] = raw.Config.Size
		}
		for _, l := range raw.Layers {
			s.layers[l.Digest] = l.Size
		}
		if isImageConfig(raw.Config.MediaType) {
			cfg, err := c.readConfig(ctx, repo, raw.Config)
			if err != nil {
				return nil, err
			}
			if cfg.Created != nil {
				s.Created = cfg.Created.UTC()
			}
			if cfg.OS != "" {
				s.Platforms = []string{platformString(cfg.OS, cfg.Architecture, cfg.Variant)}
			}
		} else if s.ArtifactType == "" {
			s.ArtifactType = raw.Config.MediaType
		}
		if t, err := time.Parse(time.RFC3339, raw.Annotations[ocispec.AnnotationCreated]); err == nil && s.Created.IsZero() {
			s.Created = t.UTC()
		}
	}
	// The size shown is what a pull of every platform transfers: config
	// and layer blobs, each once.
	for _, sz := range s.layers {
		s.Size += sz
	}
	c.sumsLock.Lock()
	c.sums[dgst] = s
	c.sumsLock.Unlock()
	c.saveSummary(dgst, s)
	return s, nil
}

func platformString(os, arch, variant string) string {
	p := os + "/" + arch
	if variant != "" {
		p += "/" + variant
	}
	return p
}

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
	c.sumsLock.Lock()
	for i := range tags {
		tags[i].Summary = c.sums[tags[i].Digest]
	}
	c.sumsLock.Unlock()
	return sum, tags, nil
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

// Layer is one layer of an image with the history entry that made it.
type Layer struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type"`
	Size      int64         `json:"size"`
	CreatedBy string        `json:"created_by,omitempty"`
}

// Child is one manifest of an index.
type Child struct {
	Digest       digest.Digest `json:"digest"`
	MediaType    string        `json:"media_type"`
	Platform     string        `json:"platform,omitempty"`
	ArtifactType string        `json:"artifact_type,omitempty"`
	Size         int64         `json:"size"`
}

// Image is everything the tag detail page shows about one manifest.
type Image struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	// Tags point to this digest in Repo.
	Tags []string `json:"tags"`
	*Summary
	ManifestSize int64               `json:"manifest_size"`
	Annotations  map[string]string   `json:"annotations,omitempty"`
	Subject      *ocispec.Descriptor `json:"subject_descriptor,omitempty"`
	// Index children (empty for an image).
	Manifests []Child `json:"manifests,omitempty"`
	// Image fields (empty for an index or artifact).
	Config     *ocispec.ImageConfig `json:"config,omitempty"`
	History    []ocispec.History    `json:"history,omitempty"`
	Layers     []Layer              `json:"layers,omitempty"`
	Dockerfile []string             `json:"dockerfile,omitempty"`
	ConfigDesc ocispec.Descriptor   `json:"config_descriptor"`
}

// Image reads the manifest dgst of repo and, for an image, its config.
func (c *Catalog) Image(ctx context.Context, repo string, dgst digest.Digest) (*Image, error) {
	r, err := c.repository(ctx, repo)
	if err != nil {
		return nil, err
	}
	raw, payload, err := c.readManifest(ctx, r, dgst)
	if err != nil {
		return nil, err
	}
	sum, err := c.summary(ctx, r, dgst)
	if err != nil {
		return nil, err
	}
	img := &Image{Repo: repo, Digest: dgst, Summary: sum, ManifestSize: int64(len(payload)),
		Annotations: raw.Annotations, Subject: raw.Subject, ConfigDesc: raw.Config}
	if img.Tags, err = c.TagsOf(ctx, repo, dgst); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	for _, m := range raw.Manifests {
		ch := Child{Digest: m.Digest, MediaType: m.MediaType, ArtifactType: m.ArtifactType, Size: m.Size}
		if p := m.Platform; p != nil {
			ch.Platform = platformString(p.OS, p.Architecture, p.Variant)
		}
		if cs, err := c.summary(ctx, r, m.Digest); err == nil {
			ch.Size = cs.Size
		}
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			ch.ArtifactType = "attestation"
		}
		img.Manifests = append(img.Manifests, ch)
	}
	if len(raw.Manifests) == 0 && isImageConfig(raw.Config.MediaType) {
		cfg, err := c.readConfig(ctx, r, raw.Config)
		if err != nil {
			return nil, err
		}
		img.Config = &cfg.Config
		img.History = cfg.History
		img.Layers = layersWithHistory(raw.Layers, cfg.History)
		img.Dockerfile = Dockerfile(cfg.History)
	} else {
		for _, l := range raw.Layers {
			img.Layers = append(img.Layers, Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size})
		}
	}
	return img, nil
}

// layersWithHistory pairs each layer with the history entry that made it:
// history entries that are not empty_layer match layers in order.
func layersWithHistory(layers []ocispec.Descriptor, hist []ocispec.History) []Layer {
	out := make([]Layer, len(layers))
	h := 0
	for i, l := range layers {
		out[i] = Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size}
		for h < len(hist) && hist[h].EmptyLayer {
			h++
		}
		if h < len(hist) {
			out[i].CreatedBy = hist[h].CreatedBy
			h++
		}
	}
	return out
}

// Dockerfile reconstructs Dockerfile instructions from image history:
// "/bin/sh -c #(nop) CMD [...]" becomes "CMD [...]", "/bin/sh -c make"
// becomes "RUN make", BuildKit's "# buildkit" suffix is dropped.
func Dockerfile(hist []ocispec.History) []string {
	var out []string
	for _, h := range hist {
		line := strings.TrimSpace(h.CreatedBy)
		if line == "" {
			continue
		}
		line = strings.TrimSuffix(line, " # buildkit")
		switch {
		case strings.HasPrefix(line, "/bin/sh -c #(nop) "):
			line = strings.TrimSpace(strings.TrimPrefix(line, "/bin/sh -c #(nop) "))
		case strings.HasPrefix(line, "/bin/sh -c "):
			line = "RUN " + strings.TrimPrefix(line, "/bin/sh -c ")
		case strings.HasPrefix(line, "|"): // "|2 A=1 B=2 /bin/sh -c make": RUN with build args
			if i := strings.Index(line, "/bin/sh -c "); i >= 0 {
				line = "RUN " + line[i+len("/bin/sh -c "):]
			}
		}
		out = append(out, line)
	}
	return out
}

func isPathNotFound(err error) bool {
	var p driver.PathNotFoundError
	return errors.As(err, &p)
}

func isRepoUnknown(err error) bool {
	var r distribution.ErrRepositoryUnknown
	return errors.As(err, &r)
}
