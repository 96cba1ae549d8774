package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// One place where a manifest changes (zot's pkg/meta/hooks.go): every
// path that stores, deletes or untags a manifest — the /v2 API
// (manifest.go), the web UI and /api (Catalog.DeleteTag,
// Catalog.DeleteManifest) and GC (gc.go) — calls OnUpdateManifest,
// OnDeleteManifest or OnUntag once distribution has made the change, and
// these keep the sha512 aliases, the referrer index, the catalog index
// and the event history in step, and tell the other replicas (journal.go).
//
// The read-only gate is entered before distribution's call: by hooks
// (events.go) for every /v2 write, by the Catalog for the UI's deletes,
// and closed by GC itself.

// changes is the bookkeeping that follows a manifest change. A nil
// events or journal skips that part (offline tools).
type changes struct {
	drv     storagedriver.StorageDriver
	idx     referrerIndex
	catalog *Catalog
	events  *EventLog
	journal *journal // nil unless the store is shared (journal.go)
	log     *slog.Logger
	// descriptors is the Redis blob descriptor cache (descriptors.go);
	// nil: none.
	descriptors *descriptorCache
}

// Actor is who asked for a change, as the history records it.
type Actor struct {
	User, Addr string
	// Via is "registry" for /v2, "ui" for the web UI, "api" for /api.
	Via string
}

type actorKey struct{}

// WithActor returns ctx carrying a, which the history records for
// changes made under ctx (the UI's deletes).
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

func actorOf(ctx context.Context) Actor {
	a, _ := ctx.Value(actorKey{}).(Actor)
	return a
}

// manifestUpdate is a manifest distribution has just stored.
type manifestUpdate struct {
	repo string
	tag  string // "" when pushed by digest
	// named is the digest the client pushed by (sha512 included);
	// canonical is its sha256, under which distribution stores it.
	named, canonical digest.Digest
	// referrer is set when the manifest has a subject.
	referrer *ocispec.Descriptor
	subject  digest.Digest
}

// OnUpdateManifest records a stored manifest: the alias link of a
// manifest pushed by another digest than sha256, its referrer index
// entry (and those of earlier referrers whose indexing failed: see
// referrerIndex.heal), the catalog index, the event, the journal. It runs
// before the client hears of success; an error makes the push fail
// (retryable).
func (c *changes) OnUpdateManifest(ctx context.Context, u manifestUpdate) error {
	if u.named != u.canonical {
		if err := c.drv.PutContent(ctx, linkPath(u.repo, "manifests", u.named), []byte(u.canonical)); err != nil {
			return fmt.Errorf("linking manifest %s to %s: %w", u.named, u.canonical, err)
		}
	}
	if u.referrer != nil {
		if err := c.idx.add(ctx, u.repo, u.subject, *u.referrer); err != nil {
			return err
		}
		c.idx.settle(ctx, u.repo, u.referrer.Digest)
		// And the referrers of the repository whose indexing failed.
		if err := c.idx.heal(ctx, u.repo); err != nil && c.log != nil {
			c.log.Warn("referrer index", "err", err)
		}
	}
	c.touch(u.repo, u.tag)
	if u.tag == "" {
		// A push by digest (index child, referrer) adds no tag, but may
		// make a dangling index complete.
		c.touch(u.repo, "")
	}
	c.record(ctx, Event{Action: "push", Repo: u.repo, Tag: u.tag, Digest: u.named})
	return nil
}

// OnDeleteManifest records that distribution deleted the manifest
// canonical (named by the client as named) from repo, with tags (the tags
// that pointed to it, for the history): its referrer entries and its
// sha512 aliases go, and the Redis cache forgets it in repo (again: the
// deleting path cleared it before the delete; a request may have cached
// it meanwhile).
func (c *changes) OnDeleteManifest(ctx context.Context, repo string, named, canonical digest.Digest, tags []string) error {
	errs := []error{c.idx.remove(ctx, repo, canonical), dropAliases(ctx, c.drv, repo, "manifests", canonical)}
	if named != canonical {
		errs = append(errs, c.idx.remove(ctx, repo, named))
	}
	errs = append(errs, c.descriptors.dropAgain(ctx, unlinked(repo, named, canonical)))
	c.touch(repo, "")
	ev := Event{Action: "delete", Repo: repo, Digest: named}
	if len(tags) > 0 {
		sort.Strings(tags)
		ev.Detail = "tags: " + strings.Join(tags, ", ")
	}
	c.record(ctx, ev)
	return errors.Join(errs...)
}

// OnUntag records that tag of repo (which pointed to d) was removed.
func (c *changes) OnUntag(ctx context.Context, repo, tag string, d digest.Digest) {
	c.touch(repo, tag)
	c.record(ctx, Event{Action: "delete", Repo: repo, Tag: tag, Digest: d})
}

func (c *changes) touch(repo, tag string) {
	if c.catalog != nil {
		c.catalog.Touch(repo, tag)
	}
}

// record adds ev, with the actor of ctx, to the history (and the journal,
// for the other replicas' histories).
func (c *changes) record(ctx context.Context, ev Event) {
	a := actorOf(ctx)
	ev.User, ev.Addr, ev.Via = a.User, a.Addr, a.Via
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if c.events != nil {
		c.events.Add(ev)
	}
	if c.journal != nil {
		c.journal.publish(ctx, journalEntry{Repo: ev.Repo, Event: &ev})
	}
}

// DeleteTag removes one tag; other tags on the same digest stay.
func (c *Catalog) DeleteTag(ctx context.Context, repo, tag string) (digest.Digest, error) {
	id, ok, reason := c.gate.enter(nil)
	if !ok {
		return "", &BusyError{Reason: reason}
	}
	defer c.gate.leave(id)
	r, err := c.repository(ctx, repo)
	if err != nil {
		return "", err
	}
	t, err := c.readTag(ctx, r, repo, tag)
	if err != nil {
		return "", err
	}
	if err := r.Tags(ctx).Untag(ctx, tag); err != nil {
		return "", fmt.Errorf("deleting tag %s:%s: %w", repo, tag, err)
	}
	c.changes().OnUntag(ctx, repo, tag, t.digest)
	return t.digest, nil
}

// DeleteManifest removes the manifest dgst (sha256, or an alias such as
// sha512) from repo and every tag that points to it, and returns those
// tags.
func (c *Catalog) DeleteManifest(ctx context.Context, repo string, dgst digest.Digest) ([]string, error) {
	id, ok, reason := c.gate.enter(nil)
	if !ok {
		return nil, &BusyError{Reason: reason}
	}
	defer c.gate.leave(id)
	r, err := c.repository(ctx, repo)
	if err != nil {
		return nil, err
	}
	canonical := dgst
	if dgst.Algorithm() != digest.Canonical {
		if canonical, err = readLink(ctx, c.driver, repo, "manifests", dgst); err != nil {
			if isPathNotFound(err) {
				return nil, fmt.Errorf("manifest %s@%s: %w", repo, dgst, ErrNotFound)
			}
			return nil, err
		}
	}
	// distribution's own DELETE clears its cache; this one goes around
	// it (the catalog has no cache), so it clears it first
	// (OnDeleteManifest does again after).
	if err := c.changes().descriptors.drop(ctx, unlinked(repo, dgst, canonical)); err != nil {
		return nil, fmt.Errorf("deleting manifest %s@%s: %w", repo, dgst, err)
	}
	tags, err := r.Tags(ctx).Lookup(ctx, ocispec.Descriptor{Digest: canonical})
	if err != nil && !isPathNotFound(err) {
		return nil, fmt.Errorf("finding tags of %s@%s: %w", repo, dgst, err)
	}
	for _, t := range tags {
		if err := r.Tags(ctx).Untag(ctx, t); err != nil {
			return nil, fmt.Errorf("deleting tag %s:%s: %w", repo, t, err)
		}
	}
	ms, err := r.Manifests(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening manifests of %s: %w", repo, err)
	}
	if err := ms.Delete(ctx, canonical); err != nil {
		var unknown distribution.ErrManifestUnknownRevision
		if errors.As(err, &unknown) || isPathNotFound(err) {
			return nil, fmt.Errorf("manifest %s@%s: %w", repo, dgst, ErrNotFound)
		}
		return nil, fmt.Errorf("deleting manifest %s@%s: %w", repo, dgst, err)
	}
	if err := c.changes().OnDeleteManifest(ctx, repo, dgst, canonical, tags); err != nil {
		return nil, fmt.Errorf("deleting manifest %s@%s: %w", repo, dgst, err)
	}
	sort.Strings(tags)
	return tags, nil
}

// changes is the catalog's bookkeeping; an offline catalog has one
// without history or journal.
func (c *Catalog) changes() *changes {
	if c.onChange != nil {
		return c.onChange
	}
	return &changes{drv: c.driver, idx: referrerIndex{drv: c.driver}, catalog: c, descriptors: c.descriptors}
}

// unlinked is the content that left repo when it no longer links the
// digest named (the client's) and its canonical sha256.
func unlinked(repo string, named, canonical digest.Digest) removed {
	ds := []digest.Digest{canonical}
	if named != canonical {
		ds = append(ds, named)
	}
	return removed{links: map[string][]digest.Digest{repo: ds}}
}
