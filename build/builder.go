package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
)

// Engine modes for Builder.Mode.
const (
	ModeAuto     = "auto"     // native unless the Dockerfile RUNs something
	ModeNative   = "native"   // native only; RUN is an error
	ModeBuildKit = "buildkit" // every Dockerfile through BuildKit
)

// Builder builds many targets: it plans every Dockerfile first (so a bad
// one stops the run before anything is pushed), then builds them bases
// first, each with the engine its Dockerfile needs.
type Builder struct {
	// Native builds Dockerfiles without RUN. Required.
	Native Engine
	// BuildKit returns the engine for Dockerfiles with RUN (and for all of
	// them in ModeBuildKit); it is called at most once, when first needed.
	// nil: such Dockerfiles fail with ErrNeedsRun.
	BuildKit func(ctx context.Context) (Engine, error)
	// Mode is ModeAuto (default), ModeNative or ModeBuildKit.
	Mode string
	// Progress receives progress lines. Default: discarded.
	Progress io.Writer
}

type planned struct {
	t     Target
	df    *Dockerfile
	bases []string
	useBK bool
	runAt int
	ref   name.Reference
}

// Build builds targets and calls done after each one, in build order.
func (b *Builder) Build(ctx context.Context, targets []Target, done func(Result)) error {
	progress := b.Progress
	if progress == nil {
		progress = io.Discard
	}
	mode := b.Mode
	if mode == "" {
		mode = ModeAuto
	}
	if mode != ModeAuto && mode != ModeNative && mode != ModeBuildKit {
		return fmt.Errorf("engine %q: want auto, native or buildkit", mode)
	}
	var plans []*planned
	var errs []error
	for _, t := range targets {
		p, err := b.plan(ctx, t, mode, progress)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plans = append(plans, p)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	plans, err := b.missingBases(ctx, plans, mode, progress)
	if err != nil {
		return err
	}
	order, err := buildOrder(plans)
	if err != nil {
		return err
	}
	var bk Engine
	defer func() {
		if c, ok := bk.(io.Closer); ok {
			c.Close()
		}
	}()
	for _, i := range order {
		p := plans[i]
		eng := b.Native
		if p.useBK {
			if bk == nil {
				if b.BuildKit == nil {
					return &DockerfileError{File: p.df.Path, Line: p.runAt, Instruction: "RUN",
						Err: errors.New("needs the buildkit engine, which this labreg was built without")}
				}
				if bk, err = b.BuildKit(ctx); err != nil {
					return fmt.Errorf("%s needs BuildKit: %w", p.df.Path, err)
				}
			}
			eng = bk
		}
		res, err := eng.Build(ctx, p.t)
		if err != nil {
			return fmt.Errorf("building %s: %w", p.t.Ref, err)
		}
		if done != nil {
			done(res)
		}
	}
	return nil
}

func (b *Builder) plan(ctx context.Context, t Target, mode string, progress io.Writer) (*planned, error) {
	ref, err := parseRef(t.Ref, t.Insecure)
	if err != nil {
		return nil, err
	}
	df, err := ParseDockerfile(dockerfilePath(t))
	if err != nil {
		return nil, err
	}
	if err := GoBuild(ctx, df, t.Context, runtime.GOARCH, progress); err != nil {
		return nil, err
	}
	if df, err = Plan(t); err != nil {
		return nil, err
	}
	p := &planned{t: t, df: df, ref: ref}
	if p.bases, err = df.Bases(t.BuildArgs); err != nil {
		return nil, err
	}
	line, hasRun := df.HasRun()
	p.runAt = line
	switch mode {
	case ModeBuildKit:
		p.useBK = true
	case ModeNative:
		if hasRun {
			return nil, &DockerfileError{File: df.Path, Line: line, Instruction: "RUN", Err: ErrNeedsRun}
		}
	default:
		p.useBK = hasRun
	}
	return p, nil
}

// buildOrder sorts plans so that an image comes after every other target
// it is built FROM; otherwise the given order is kept.
func buildOrder(plans []*planned) ([]int, error) {
	byName := map[string]int{}
	for i, p := range plans {
		byName[refKey(p.ref)] = i
	}
	deps := make([][]int, len(plans))
	for i, p := range plans {
		for _, b := range p.bases {
			r, err := name.ParseReference(b)
			if err != nil {
				continue
			}
			if j, ok := byName[refKey(r)]; ok && j != i {
				deps[i] = append(deps[i], j)
			}
		}
	}
	state := make([]int, len(plans)) // 0 new, 1 visiting, 2 done
	var order []int
	var visit func(i int) error
	visit = func(i int) error {
		switch state[i] {
		case 1:
			return fmt.Errorf("%s: FROM cycle through %s", plans[i].df.Path, plans[i].t.Ref)
		case 2:
			return nil
		}
		state[i] = 1
		for _, j := range deps[i] {
			if err := visit(j); err != nil {
				return err
			}
		}
		state[i] = 2
		order = append(order, i)
		return nil
	}
	for i := range plans {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// refKey names the image ref stands for, whatever its spelling, to match
// a FROM against the targets that produce it.
func refKey(ref name.Reference) string {
	return ref.Context().Name() + ":" + ref.Identifier()
}

func dockerfilePath(t Target) string {
	if t.Dockerfile != "" {
		return t.Dockerfile
	}
	return t.Context + "/Dockerfile"
}
