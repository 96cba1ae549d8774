package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// GCOptions selects what garbage collection removes. Blobs no manifest
// references always go.
type GCOptions struct {
	// DryRun reports what would go without removing anything. Default false.
	DryRun bool
	// RemoveUntagged removes manifests no tag reaches (directly, as a child
	// of a tagged index, or as a referrer of a kept manifest). Default false.
	RemoveUntagged bool
	// RemoveEmptyRepos removes repositories left with no tag and no
	// manifest. Default false.
	RemoveEmptyRepos bool
	// Keep are manifests that must stay although no tag reaches them, with
	// the reason (e.g. "used by service myhttpd (previous spec)"): the
	// images swarm services run or roll back to. They and everything they
	// reference stay, in every repository. The caller computes them (the
	// registry does not know the swarm). Default: none.
	Keep map[digest.Digest]string `json:"-"`
	// fence, when set, is asked before every removal: an error stops the
	// GC (a replica that may have lost the cluster's GC lease).
	fence      func() error
	fenceUntil func() time.Time
}

// GCKept is an untagged manifest kept because GCOptions.Keep names it.
type GCKept struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	Reason string        `json:"reason"`
}

// GCBlob is a blob garbage collection removes.
type GCBlob struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// GCManifest is an untagged manifest garbage collection removes.
type GCManifest struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
}

// GCResult says what went (or, for a dry run, would go).
type GCResult struct {
	DryRun       bool         `json:"dry_run"`
	Blobs        []GCBlob     `json:"blobs"`
	Manifests    []GCManifest `json:"manifests"`
	Repositories []string     `json:"repositories"`
	// Bytes is the size of the blobs that went (would go).
	Bytes int64 `json:"bytes"`
	// Kept is the number of blobs and manifests still referenced.
	Kept     int           `json:"kept"`
	Duration time.Duration `json:"duration"`
	// InUse are the untagged manifests kept because something uses them
	// (GCOptions.Keep): only with RemoveUntagged, the others stay anyway.
	InUse []GCKept `json:"in_use,omitempty"`
	// Unchecked, when set, says why what uses the images (the swarm) could
	// not be checked; the caller sets it.
	Unchecked string `json:"unchecked,omitempty"`
}

// GC runs garbage collection online: unless it is a dry run, the registry
// is read-only (pushes get 503 with Retry-After) from the start of the mark
// until the sweep ends. The outcome is recorded as a "gc" event.
func (s *Server) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	if !opts.DryRun && s.extras.journal != nil {
		// A shared store: one GC at a time in the cluster, every replica
		// read-only (gclease.go), each delete fenced by the lease.
		// Released after the GC's journal entry.
		turn, err := s.acquireGC(ctx)
		if err != nil {
			return nil, err
		}
		defer turn.release()
		ctx, opts.fence, opts.fenceUntil = turn.ctx, turn.fence, turn.held.Until
	}
	if !opts.DryRun {
		resume, err := s.ReadOnly(ctx, "garbage collection")
		if err != nil {
			return nil, err
		}
		defer resume()
	}
	res, err := s.Catalog().GC(ctx, opts)
	if res == nil {
		return nil, err
	}
	// A result with an error: the removal began (and stopped part-way,
	// or the cache could not be cleared after it): every cache forgets
	// all of res.Blobs all the same, and it is recorded and told to the
	// replicas.
	if !opts.DryRun {
		ev := Event{Time: time.Now().UTC(), Action: "gc", Detail: res.summary(err)}
		s.Events().Add(ev)
		s.afterGC(ctx, res, ev)
	}
	return res, err
}

// summary is the history's line for a GC that ended with err (nil: whole).
func (res *GCResult) summary(err error) string {
	what := fmt.Sprintf("%d blobs (%d bytes), %d manifests, %d repositories", len(res.Blobs), res.Bytes, len(res.Manifests), len(res.Repositories))
	if err != nil {
		return "stopped part-way (" + err.Error() + "); planned to remove " + what
	}
	return "removed " + what
}

// ErrInUse is returned by OfflineGC when a server is writing to the data dir.
var ErrInUse = errors.New("a labreg server is writing to this data directory")

// OfflineGC runs garbage collection directly on the data dir of srv (the
// server's Options, from the same config: DataDir, Redis and Logger are
// used), holding the data dir's lock exclusively: a server on the same
// data dir holds it shared while it writes, so OfflineGC fails while a
// write is in flight, and a running server refuses writes (503, retryable)
// until OfflineGC ends. It records a "gc" event in the data dir's history,
// and a running server's catalog reloads at its next read. With Redis,
// what goes is dropped from the cache first (Redis not answering: an
// error, nothing removed) and again after (failing then: the result and
// an error).
func OfflineGC(ctx context.Context, srv Options, opts GCOptions) (*GCResult, error) {
	dataDir, log := srv.DataDir, srv.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking data directory %s: %w", dataDir, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("%s: %w; try again, or run gc through its UI", dataDir, ErrInUse)
	}
	c, err := NewCatalog(ctx, dataDir)
	if err != nil {
		return nil, err
	}
	if c.descriptors, err = descriptorCacheOf(srv); err != nil {
		return nil, err
	}
	defer c.descriptors.close()
	res, err := c.GC(ctx, opts)
	if res == nil {
		return nil, err
	}
	if !opts.DryRun {
		if rerr := recordOffline(dataDir, Event{Action: "gc", Via: "offline", Detail: res.summary(nil)}); rerr != nil {
			log.Warn("recording the gc in the history", "err", rerr)
		}
		if merr := markOfflineChange(dataDir); merr != nil {
			err = errors.Join(err, merr)
		}
	}
	return res, err
}

// fencedDriver refuses to delete once fence fails.
type fencedDriver struct {
	storagedriver.StorageDriver
	fence func() error
	until func() time.Time // nil: no deadline
}

func (d fencedDriver) Delete(ctx context.Context, p string) error {
	if err := d.fence(); err != nil {
		return err
	}
	if d.until != nil { // a delete still under way then is cut
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.until())
		defer cancel()
	}
	return d.StorageDriver.Delete(ctx, p)
}

func fenceOK(fence func() error) error {
	if fence == nil {
		return nil
	}
	return fence()
}

// repoPlan is what the mark phase learned about one repository.
type repoPlan struct {
	name      string
	tags      []string
	manifests []digest.Digest
	drop      []digest.Digest // untagged manifests to remove
	inUse     []GCKept        // untagged manifests kept for GCOptions.Keep
}

// GC plans garbage collection over the storage and, unless DryRun, carries
// it out (an error once removal began comes with the result: its Blobs may
// be partly gone): untagged manifests and empty repositories first (when asked),
// then distribution's storage.MarkAndSweep, which keeps every blob any
// remaining manifest references. The caller must keep writers out (Server.GC
// does; offline, stop the server). What goes is dropped from the Redis
// descriptor cache before and after: when that fails before, nothing is
// removed; when it fails after, GC returns the result with the error.
func (c *Catalog) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	start := time.Now()
	plans, err := c.plan(ctx, opts)
	if err != nil {
		return nil, err
	}
	res := &GCResult{DryRun: opts.DryRun, Blobs: []GCBlob{}, Manifests: []GCManifest{}, Repositories: []string{}}
	marked := map[digest.Digest]bool{}
	var emptyRepos []*repoPlan
	for _, p := range plans {
		dropped := map[digest.Digest]bool{}
		for _, d := range p.drop {
			dropped[d] = true
			res.Manifests = append(res.Manifests, GCManifest{Repo: p.name, Digest: d})
		}
		res.InUse = append(res.InUse, p.inUse...)
		if opts.RemoveEmptyRepos && len(p.tags) == 0 && len(p.manifests) == len(p.drop) {
			emptyRepos = append(emptyRepos, p)
			res.Repositories = append(res.Repositories, p.name)
			continue
		}
		repo, err := c.repository(ctx, p.name)
		if err != nil {
			return nil, err
		}
		for _, d := range p.manifests {
			if dropped[d] {
				continue
			}
			if err := c.markRefs(ctx, repo, d, marked); err != nil {
				return nil, err
			}
		}
	}
	stat := c.ns.BlobStatter()
	err = c.ns.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		if marked[d] {
			return nil
		}
		desc, err := stat.Stat(ctx, d)
		if err != nil {
			return fmt.Errorf("sizing blob %s: %w", d, err)
		}
		res.Blobs = append(res.Blobs, GCBlob{Digest: d, Size: desc.Size})
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return nil, fmt.Errorf("listing blobs: %w", err)
	}
	sort.Slice(res.Blobs, func(i, j int) bool { return res.Blobs[i].Digest < res.Blobs[j].Digest })
	res.Kept = len(marked)
	if opts.DryRun {
		for _, b := range res.Blobs {
			res.Bytes += b.Size
		}
		res.Duration = time.Since(start)
		return res, nil
	}

	// The cache forgets what goes before it goes (a Redis that does not
	// answer stops the GC here, nothing removed) and again after (a pull
	// may have cached it meanwhile).
	gone := removed{links: map[string][]digest.Digest{}}
	for _, b := range res.Blobs {
		gone.blobs = append(gone.blobs, b.Digest)
	}
	for _, p := range plans {
		if len(p.drop) > 0 {
			gone.links[p.name] = p.drop
		}
	}
	for _, p := range emptyRepos {
		gone.repos = append(gone.repos, p.name)
	}
	if err := c.descriptors.drop(ctx, gone); err != nil {
		return nil, fmt.Errorf("garbage collection: %w", err)
	}

	drv := c.driver
	if opts.fence != nil {
		drv = fencedDriver{drv, opts.fence, opts.fenceUntil}
		if err := opts.fence(); err != nil {
			return nil, err // nothing removed yet
		}
	}
	vacuum := storage.NewVacuum(ctx, drv)
	for _, p := range plans {
		for _, d := range p.drop {
			if err := vacuum.RemoveManifest(p.name, d, p.tags); err != nil {
				return res, fmt.Errorf("removing untagged manifest %s@%s: %w", p.name, d, err)
			}
			if err := fenceOK(opts.fence); err != nil {
				return res, err
			}
			if err := c.changes().OnDeleteManifest(WithActor(ctx, Actor{Via: "gc"}), p.name, d, d, nil); err != nil {
				return res, fmt.Errorf("removing untagged manifest %s@%s: %w", p.name, d, err)
			}
		}
	}
	for _, p := range emptyRepos {
		if err := vacuum.RemoveRepository(p.name); err != nil {
			return res, fmt.Errorf("removing empty repository %s: %w", p.name, err)
		}
	}
	if _, err := c.driver.Stat(ctx, reposPath()); isPathNotFound(err) {
		// No repository at all (a fresh storage): MarkAndSweep fails on the
		// missing repositories root, and on the missing blobs root after
		// it, so it is skipped here rather than taught about either. No
		// manifest references any blob.
		for _, b := range res.Blobs {
			if err := vacuum.RemoveBlob(string(b.Digest)); err != nil {
				return res, fmt.Errorf("removing blob %s: %w", b.Digest, err)
			}
		}
	} else if err := storage.MarkAndSweep(ctx, drv, withAliases(c.ns, c.driver), storage.GCOpts{Quiet: true}); err != nil {
		return res, fmt.Errorf("garbage collection: %w", err)
	}
	// Count what actually went.
	for _, b := range res.Blobs {
		if _, err := stat.Stat(ctx, b.Digest); errors.Is(err, distribution.ErrBlobUnknown) || isPathNotFound(err) {
			res.Bytes += b.Size
		}
	}
	c.Reload()
	res.Duration = time.Since(start)
	if err := c.descriptors.dropAgain(ctx, gone); err != nil {
		return res, fmt.Errorf("garbage collection: %d blobs, %d manifests, %d repositories %w",
			len(res.Blobs), len(res.Manifests), len(res.Repositories), err)
	}
	return res, nil
}

// plan lists every repository's tags and manifests and, with
// RemoveUntagged, the manifests no tag reaches.
func (c *Catalog) plan(ctx context.Context, opts GCOptions) ([]*repoPlan, error) {
	var plans []*repoPlan
	err := c.ns.(distribution.RepositoryEnumerator).Enumerate(ctx, func(name string) error {
		plans = append(plans, &repoPlan{name: name})
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return nil, fmt.Errorf("listing repositories: %w", err)
	}
	for _, p := range plans {
		repo, err := c.repository(ctx, p.name)
		if err != nil {
			return nil, err
		}
		p.tags, err = repo.Tags(ctx).All(ctx)
		if err != nil && !isRepoUnknown(err) && !isPathNotFound(err) {
			return nil, fmt.Errorf("listing tags of %s: %w", p.name, err)
		}
		ms, err := repo.Manifests(ctx)
		if err != nil {
			return nil, fmt.Errorf("opening manifests of %s: %w", p.name, err)
		}
		err = ms.(distribution.ManifestEnumerator).Enumerate(ctx, func(d digest.Digest) error {
			p.manifests = append(p.manifests, d)
			return nil
		})
		if err != nil && !isPathNotFound(err) {
			return nil, fmt.Errorf("listing manifests of %s: %w", p.name, err)
		}
		if !opts.RemoveUntagged {
			continue
		}
		// Keep what tags reach: tagged manifests, index children, and
		// referrers of anything kept, until nothing changes.
		keep := map[digest.Digest]bool{}
		var walk func(d digest.Digest) error
		walk = func(d digest.Digest) error {
			if keep[d] {
				return nil
			}
			keep[d] = true
			raw, _, err := c.readManifest(ctx, repo, d)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			for _, m := range raw.Manifests {
				if err := walk(m.Digest); err != nil {
					return err
				}
			}
			return nil
		}
		for _, t := range p.tags {
			desc, err := repo.Tags(ctx).Get(ctx, t)
			if err != nil {
				continue
			}
			if err := walk(desc.Digest); err != nil {
				return nil, err
			}
		}
		// Then what is in use (GCOptions.Keep) and all it reaches, noting
		// which manifests stay only for that.
		tagged := make(map[digest.Digest]bool, len(keep))
		for d := range keep {
			tagged[d] = true
		}
		reason := map[digest.Digest]string{}
		for _, d := range p.manifests {
			if why, ok := opts.Keep[d]; ok && !keep[d] {
				before := make(map[digest.Digest]bool, len(keep))
				for k := range keep {
					before[k] = true
				}
				if err := walk(d); err != nil {
					return nil, err
				}
				for k := range keep {
					if !before[k] {
						reason[k] = why
					}
				}
			}
		}
		subjects := map[digest.Digest]digest.Digest{}
		for _, d := range p.manifests {
			raw, _, err := c.readManifest(ctx, repo, d)
			if err == nil && raw.Subject != nil {
				subjects[d] = raw.Subject.Digest
			}
		}
		for changed := true; changed; {
			changed = false
			for d, subj := range subjects {
				if !keep[d] && keep[subj] {
					if err := walk(d); err != nil {
						return nil, err
					}
					changed = true
				}
			}
		}
		for _, d := range p.manifests {
			switch {
			case !keep[d]:
				p.drop = append(p.drop, d)
			case !tagged[d] && reason[d] != "":
				p.inUse = append(p.inUse, GCKept{Repo: p.name, Digest: d, Reason: reason[d]})
			}
		}
	}
	return plans, nil
}

// markRefs marks d and everything it references (config, layers, children).
func (c *Catalog) markRefs(ctx context.Context, repo distribution.Repository, d digest.Digest, marked map[digest.Digest]bool) error {
	if marked[d] {
		return nil
	}
	mark := func(d digest.Digest) {
		marked[d] = true
		// Content pushed by a sha512 digest is stored under its sha256
		// (digest.go): keep that too, as withAliases makes MarkAndSweep do.
		if d.Algorithm() != digest.Canonical && d.Validate() == nil {
			for _, kind := range []string{"blobs", "manifests"} {
				if cd, err := readLink(ctx, c.driver, repo.Named().Name(), kind, d); err == nil {
					marked[cd] = true
				}
			}
		}
	}
	mark(d)
	raw, _, err := c.readManifest(ctx, repo, d)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if raw.Config.Digest != "" {
		mark(raw.Config.Digest)
	}
	for _, l := range raw.Layers {
		mark(l.Digest)
	}
	for _, m := range raw.Manifests {
		if err := c.markRefs(ctx, repo, m.Digest, marked); err != nil {
			return err
		}
	}
	return nil
}
