package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
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
// first, each with the engine its Dockerfile needs, and publishes each.
type Builder struct {
	// Native builds Dockerfiles without RUN. Required.
	Native Engine
	// BuildKit returns the engine for Dockerfiles with RUN (and for all of
	// them in ModeBuildKit); it is called at most once, when first needed,
	// and closed at the end when it is an io.Closer. nil: such Dockerfiles
	// fail with ErrNeedsRun.
	BuildKit func(ctx context.Context) (SelfPublisher, error)
	// Publisher publishes each image. Default: &Registry{Keychain,
	// Transport, Progress}.
	Publisher Publisher
	// Mode is ModeAuto (default), ModeNative or ModeBuildKit.
	Mode string
	// Keychain and Transport are used to ask a registry whether it has a
	// base (missing bases beside a target are built first); give the ones
	// the engine pulls with. Default: authn.DefaultKeychain,
	// remote.DefaultTransport.
	Keychain  authn.Keychain
	Transport http.RoundTripper
	// Progress receives progress lines. Default: discarded.
	Progress io.Writer
}

// planned is a plan and the engine it needs.
type planned struct {
	*Plan
	useBK bool
	runAt int
}

// localBases is an engine that takes images of this run that were
// published where its pulls do not reach them (an OCI layout) as the
// bases of later FROMs.
type localBases interface {
	addLocal(p *Plan, a Artifact)
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
	pub := b.Publisher
	if pub == nil {
		pub = &Registry{Keychain: b.Keychain, Transport: b.Transport, Progress: progress}
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
	var bk SelfPublisher
	defer func() {
		if c, ok := bk.(io.Closer); ok {
			c.Close()
		}
	}()
	for _, i := range order {
		p := plans[i]
		var res Result
		if p.useBK {
			if bk == nil {
				if b.BuildKit == nil {
					return &DockerfileError{File: p.Dockerfile.Path, Line: p.runAt, Instruction: "RUN",
						Err: errors.New("needs the buildkit engine, which this labreg was built without")}
				}
				if bk, err = b.BuildKit(ctx); err != nil {
					return fmt.Errorf("%s needs BuildKit: %w", p.Dockerfile.Path, err)
				}
			}
			if res, err = bk.BuildAndPublish(ctx, p.Plan, pub); err != nil {
				return fmt.Errorf("building %s: %w", p.Target.Ref, err)
			}
		} else {
			a, err := b.Native.Build(ctx, p.Plan)
			if err != nil {
				return fmt.Errorf("building %s: %w", p.Target.Ref, err)
			}
			if res, err = pub.Publish(ctx, a, p.Plan); err != nil {
				return err
			}
			if _, pushed := pub.(*Registry); !pushed {
				if lb, ok := b.Native.(localBases); ok {
					lb.addLocal(p.Plan, a)
				}
			}
		}
		if done != nil {
			done(res)
		}
	}
	return nil
}

func (b *Builder) plan(ctx context.Context, t Target, mode string, progress io.Writer) (*planned, error) {
	if t.Ref == "" {
		return nil, fmt.Errorf("%s: %w", t.Context, errNoRef)
	}
	p, err := NewPlan(ctx, t, progress)
	if err != nil {
		return nil, err
	}
	pl := &planned{Plan: p}
	line, hasRun := p.Run()
	pl.runAt = line
	switch mode {
	case ModeBuildKit:
		pl.useBK = true
	case ModeNative:
		if hasRun {
			return nil, &DockerfileError{File: p.Dockerfile.Path, Line: line, Instruction: "RUN", Err: ErrNeedsRun}
		}
	default:
		pl.useBK = hasRun
	}
	return pl, nil
}

// buildOrder sorts plans so that an image comes after every other target
// it is built FROM; otherwise the given order is kept.
func buildOrder(plans []*planned) ([]int, error) {
	byName := map[string]int{}
	for i, p := range plans {
		byName[refKey(p.Ref)] = i
	}
	deps := make([][]int, len(plans))
	for i, p := range plans {
		for _, b := range p.Bases {
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
			return fmt.Errorf("%s: FROM cycle through %s", plans[i].Dockerfile.Path, plans[i].Target.Ref)
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
