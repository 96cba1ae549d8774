package build

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
)

// Plan is a Target whose Dockerfile has been parsed and checked, once:
// engines build from it without reading the Dockerfile again.
type Plan struct {
	Target
	// Dockerfile is the parsed Dockerfile.
	Dockerfile *Dockerfile
	// Bases are the images its FROMs pull (Dockerfile.Bases).
	Bases []string
	// Ref is Target.Ref parsed (insecure when Target.Insecure); nil when
	// the target has no Ref (planning only).
	Ref name.Reference
}

// NewPlan parses t's Dockerfile, runs its "# labreg:go-build" directives
// (GoBuild, for this binary's GOARCH, compiler output to progress) and
// checks every instruction and local source without building or fetching
// anything: a Dockerfile that passes fails later only for reasons outside
// it (registry, network). A RUN is not an error here (Plan.Run says where
// it is); the native engine refuses it.
func NewPlan(ctx context.Context, t Target, progress io.Writer) (*Plan, error) {
	if progress == nil {
		progress = io.Discard
	}
	var ref name.Reference
	if t.Ref != "" {
		r, err := parseRef(t.Ref, t.Insecure)
		if err != nil {
			return nil, err
		}
		ref = r
	}
	df, err := ParseDockerfile(dockerfilePath(t))
	if err != nil {
		return nil, err
	}
	if err := GoBuild(ctx, df, t.Context, runtime.GOARCH, progress); err != nil {
		return nil, err
	}
	cctx, err := openContext(t.Context)
	if err != nil {
		return nil, err
	}
	ev := &evaluator{df: df, ctxDir: cctx, args: t.BuildArgs, dry: true, progress: io.Discard}
	if _, err := ev.run(ctx); err != nil && !errors.Is(err, ErrNeedsRun) {
		return nil, err
	}
	p := &Plan{Target: t, Dockerfile: df, Ref: ref}
	if p.Bases, err = df.Bases(t.BuildArgs); err != nil {
		return nil, err
	}
	return p, nil
}

// Run returns the line of the first RUN, which only BuildKit builds.
func (p *Plan) Run() (int, bool) { return p.Dockerfile.HasRun() }

func dockerfilePath(t Target) string {
	if t.Dockerfile != "" {
		return t.Dockerfile
	}
	return filepath.Join(t.Context, "Dockerfile")
}
