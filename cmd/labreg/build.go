package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/build"
)

// buildOptions are `labreg build`'s flags, arguments and the config
// values it uses: everything runBuild needs.
type buildOptions struct {
	io           streams
	dirs         []string
	registry     string // client.registry
	buildkitAddr string // client.buildkit_addr

	tags      []string
	buildArgs []string
	push      bool
	noPush    bool
	layout    string
	engine    string
	wait      time.Duration
	progress  string
}

func newBuildCmd(io streams) *cobra.Command { return buildCmd(io, runBuild) }

// buildCmd is `labreg build` running runF with the parsed options (tests
// pass their own runF to check flag parsing without building).
func buildCmd(io streams, runF func(context.Context, *buildOptions) error) *cobra.Command {
	o := buildOptions{io: io}
	cmd := &cobra.Command{
		Use:   "build DIR...",
		Short: "Build images from image directories (images/<repo>/<tag>/Dockerfile) and push them",
		Long: `Build images from image directories and push them to the registry.

A directory with a Dockerfile is one image: images/<repo>/<tag>/ becomes
<registry>/<repo>:<tag>. DIR may be such a directory, a directory of them
(images/samsung) or a whole tree (images/). Images built FROM another image
of the same run are built after it. The build-arg REGISTRY is set to the
registry address unless given.

Prints one line per image on stdout: <registry>/<repo>:<tag>@sha256:<digest>.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			o.dirs, o.registry, o.buildkitAddr = args, c.Client.Registry, c.Client.BuildkitAddr
			if o.noPush {
				o.push = false
			}
			return runF(cmd.Context(), &o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.tags, "tag", "t", nil, "name the image REPO:TAG (one per DIR) instead of from its directory")
	f.StringArrayVar(&o.buildArgs, "build-arg", nil, "set a build-time variable KEY=VALUE (repeatable)")
	f.BoolVar(&o.push, "push", true, "push to the registry")
	f.BoolVar(&o.noPush, "no-push", false, "write to an OCI layout (--layout) instead of pushing")
	f.StringVar(&o.layout, "layout", build.DefaultLayout, "OCI layout directory for --no-push")
	f.StringVar(&o.engine, "engine", build.ModeAuto, "build engine: auto (native unless the Dockerfile has RUN), native or buildkit")
	addProgressFlag(cmd, &o.progress, "progress")
	f.DurationVar(&o.wait, "wait", 0, "wait this long for the registry to answer before building (e.g. 60s while it starts)")
	bindConfig(cmd, "client.", "log.")
	return cmd
}

// runBuild builds o.dirs: image lines to stdout, progress to stderr.
func runBuild(ctx context.Context, o *buildOptions) error {
	progress, err := progressWriter(o.progress, o.io.Err)
	if err != nil {
		return err
	}
	targets, err := buildTargets(o.dirs, *o, o.registry)
	if err != nil {
		return err
	}
	if o.wait > 0 && o.push {
		if err := build.WaitRegistry(ctx, o.registry, true, o.wait); err != nil {
			return err
		}
	}
	native, err := build.NewNative(build.NativeOptions{Progress: progress})
	if err != nil {
		return usageError{err}
	}
	defer native.Close()
	var pub build.Publisher = &build.Registry{Progress: progress}
	if !o.push {
		pub = &build.Layout{Dir: o.layout, Progress: progress}
	}
	b := &build.Builder{
		Native:    native,
		Publisher: pub,
		Mode:      o.engine,
		Progress:  progress,
		BuildKit: func(ctx context.Context) (build.SelfPublisher, error) {
			return build.NewBuildKit(ctx, o.buildkitAddr, progress)
		},
	}
	return b.Build(ctx, targets, func(r build.Result) {
		fmt.Fprintf(o.io.Out, "%s@%s\n", r.Ref, r.Digest)
	})
}

// buildTargets turns the DIR arguments into build targets.
func buildTargets(args []string, o buildOptions, registry string) ([]build.Target, error) {
	switch o.engine {
	case build.ModeAuto, build.ModeNative, build.ModeBuildKit:
	default:
		return nil, usageError{fmt.Errorf("--engine %q: want auto, native or buildkit", o.engine)}
	}
	buildArgs := map[string]string{"REGISTRY": registry}
	for _, a := range o.buildArgs {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("--build-arg %q: want KEY=VALUE", a)}
		}
		buildArgs[k] = v
	}
	dirs, err := build.Discover(args...)
	if err != nil {
		return nil, usageError{err}
	}
	if len(o.tags) > 0 && len(o.tags) != len(dirs) {
		return nil, usageError{fmt.Errorf("-t given %d times for %d image directories: give one per image or none", len(o.tags), len(dirs))}
	}
	targets := make([]build.Target, len(dirs))
	for i, d := range dirs {
		name := d.Repo + ":" + d.Tag
		if len(o.tags) > 0 {
			name = o.tags[i]
			if !strings.Contains(name, ":") {
				name += ":latest"
			}
		}
		if strings.Count(name, "/") > 0 && strings.Contains(strings.SplitN(name, "/", 2)[0], ".") {
			return nil, usageError{errors.New("-t takes REPO:TAG; the registry comes from --registry")}
		}
		targets[i] = build.Target{
			Context:   d.Path,
			Ref:       registry + "/" + name,
			BuildArgs: buildArgs,
			Insecure:  true,
		}
	}
	return targets, nil
}
