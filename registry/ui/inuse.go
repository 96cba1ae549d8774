package ui

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/registry"
)

// InUseFunc reports the manifests something outside the registry needs,
// digest -> reason ("used by service myhttpd (previous spec)"): the images
// swarm services run or roll back to. An error means it could not tell.
type InUseFunc func(ctx context.Context) (map[digest.Digest]string, error)

// errConflict: the request would remove what something uses; the caller
// must confirm (or say the check may be skipped).
var errConflict = errors.New("conflict")

// gcKeep fills opts.Keep from Options.InUse before a GC that removes
// untagged manifests (the only GC that could remove a manifest a service
// uses). When the swarm cannot be asked, a dry run goes on and says so; a
// real run is refused unless ignore is set (--ignore-swarm): an untagged
// manifest removed while a service is pinned to it breaks its next
// rollback or rescheduled task, and cannot be undone.
func (u *UI) gcKeep(ctx context.Context, opts *registry.GCOptions, ignore bool) (unchecked string, err error) {
	if !opts.RemoveUntagged || u.opts.InUse == nil {
		return "", nil
	}
	keep, err := u.opts.InUse(ctx)
	if err == nil {
		opts.Keep = keep
		return "", nil
	}
	msg := fmt.Sprintf("could not check which images swarm services use (%v)", err)
	if opts.DryRun || ignore {
		return msg, nil
	}
	return "", fmt.Errorf("%s, so untagged manifests are not removed: a service pinned to one could not roll back or reschedule; "+
		"start the engine, or remove them unchecked (labreg gc --ignore-swarm, or the checkbox): %w", msg, errConflict)
}

// inUse is why something uses manifest d ("" when nothing does or it
// cannot be told), and the error of asking.
func (u *UI) inUse(ctx context.Context, d digest.Digest) (string, error) {
	if u.opts.InUse == nil {
		return "", nil
	}
	keep, err := u.opts.InUse(ctx)
	if err != nil {
		return "", err
	}
	return keep[d], nil
}

// checkDeleteInUse refuses to delete a manifest a service uses unless the
// request confirms it (form field or query "in_use" = "confirm").
func (u *UI) checkDeleteInUse(r *http.Request, repo string, d digest.Digest) error {
	why, err := u.inUse(r.Context(), d)
	if err != nil || why == "" {
		return nil // a manifest delete is undone by a push; GC is the guarded step
	}
	if r.FormValue("in_use") == "confirm" {
		return nil
	}
	return fmt.Errorf("%s@%s is %s: deleting it breaks that service's rollback or rescheduled tasks; confirm with in_use=confirm: %w",
		repo, shortDigest(d), why, errConflict)
}

// confirmView is the delete confirmation page: the image, and which
// service uses it ("" when none does).
type confirmView struct {
	*Image
	InUse string
}
