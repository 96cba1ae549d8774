package main

import (
	"context"
	"errors"
	"fmt"
	stdio "io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/build"
)

func init() { extraCommands = append(extraCommands, newBuildCmd) }

// buildOptions are `labreg build`'s flags.
type buildOptions struct {
	tags      []string
	buildArgs []string
	push      bool
	noPush    bool
	layout    string
	engine    string
	wait      time.Duration
	progress  string
}

func newBuildCmd(io streams) *cobra.Command {
	var o buildOptions
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
			if o.noPush {
				o.push = false
			}
			ctx := cmd.Context()
			targets, err := buildTargets(args, o, c.Client.Registry)
			if err != nil {
				return err
			}
			if o.wait > 0 && o.push {
				if err := build.WaitRegistry(ctx, c.Client.Registry, true, o.wait); err != nil {
					return err
				}
			}
			var progress stdio.Writer = stdio.Discard
			switch o.progress {
			case "plain":
				progress = io.Err
			case "auto":
				if isTerminal(io.Err) {
					progress = io.Err
				}
			case "none":
			default:
				return usageError{fmt.Errorf("--progress %q: want auto, plain or none", o.progress)}
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
					return build.NewBuildKit(ctx, c.Client.BuildkitAddr, progress)
				},
			}
			return b.Build(ctx, targets, func(r build.Result) {
				fmt.Fprintf(io.Out, "%s@%s\n", r.Ref, r.Digest)
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.tags, "tag", "t", nil, "name the image REPO:TAG (one per DIR) instead of from its directory")
	f.StringArrayVar(&o.buildArgs, "build-arg", nil, "set a build-time variable KEY=VALUE (repeatable)")
	f.BoolVar(&o.push, "push", true, "push to the registry")
	f.BoolVar(&o.noPush, "no-push", false, "write to an OCI layout (--layout) instead of pushing")
	f.StringVar(&o.layout, "layout", build.DefaultLayout, "OCI layout directory for --no-push")
	f.StringVar(&o.engine, "engine", build.ModeAuto, "build engine: auto (native unless the Dockerfile has RUN), native or buildkit")
	f.StringVar(&o.progress, "progress", "auto", "progress on stderr: auto (when it is a terminal), plain (always) or none")
	f.DurationVar(&o.wait, "wait", 0, "wait this long for the registry to answer before building (e.g. 60s while it starts)")
	bindConfig(cmd, "client.", "log.")
	return cmd
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
