package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// baseResolver returns the image a FROM (or COPY --from) names.
type baseResolver func(ctx context.Context, ref string) (v1.Image, error)

// evaluator runs a Dockerfile's instructions. In dry mode (planning) it
// builds no layers and fetches no base image: it expands every
// instruction and checks every local source, so that a bad Dockerfile
// fails before anything is pulled or pushed.
type evaluator struct {
	df       *Dockerfile
	ctxDir   *buildContext
	args     map[string]string
	dry      bool
	resolve  baseResolver
	platform v1.Platform
	epoch    time.Time
	tmpDir   string
	progress io.Writer
	name     string // the image's short name for progress lines

	meta   *envList
	lex    *shell.Lex
	stages []*stage
}

// stage is one FROM of the Dockerfile being evaluated.
type stage struct {
	name   string
	index  int
	base   v1.Image // nil for scratch (and in dry mode)
	cfg    *v1.ConfigFile
	adds   []mutate.Addendum
	vars   *envList // ENV and ARG values, for expansion
	shell  []string
	cmdSet bool
	// envUnknown: planning without the base image, whose ENV may define
	// variables the Dockerfile uses.
	envUnknown bool
	layerMT    types.MediaType
	oci        bool
	img        v1.Image
	fs         map[string]*fsEntry // flattened filesystem, for COPY --from
}

func (e *evaluator) run(ctx context.Context) (v1.Image, error) {
	var err error
	e.lex = shell.NewLex(e.df.Escape)
	if e.meta, err = e.df.metaArgs(e.args); err != nil {
		return nil, err
	}
	for i, sn := range e.df.Stages {
		st, err := e.from(ctx, i, sn)
		if err != nil {
			return nil, err
		}
		e.stages = append(e.stages, st)
		for _, nd := range sn.commands {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := e.dispatch(ctx, st, nd); err != nil {
				return nil, e.df.errAt(nd, err)
			}
		}
	}
	if e.dry {
		return nil, nil
	}
	return e.stages[len(e.stages)-1].image()
}

func (e *evaluator) from(ctx context.Context, i int, sn *stageNodes) (*stage, error) {
	baseName, _, err := e.lex.ProcessWord(sn.baseName, e.meta)
	if err != nil {
		return nil, e.df.errAt(sn.from, err)
	}
	if sn.platform != "" {
		return nil, e.df.errAt(sn.from, errors.New("--platform is not supported by the native engine"))
	}
	st := &stage{name: sn.name, index: i, vars: newEnvList(), shell: []string{"/bin/sh", "-c"}}
	if prev := e.stageByName(baseName); prev != nil && e.dry {
		st.cfg = prev.cfg.DeepCopy()
		st.layerMT, st.oci, st.envUnknown = prev.layerMT, prev.oci, prev.envUnknown
	} else if prev != nil {
		img, err := prev.image()
		if err != nil {
			return nil, err
		}
		if err := st.setBase(img, e.dry); err != nil {
			return nil, e.df.errAt(sn.from, err)
		}
		if prev.cfg != nil {
			st.cfg = prev.cfg.DeepCopy()
			st.shell = slices.Clone(prev.shell)
		}
	} else if baseName == "scratch" {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
	} else if e.dry {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
		st.envUnknown = true
	} else {
		fmt.Fprintf(e.progress, "%s: FROM %s\n", e.name, baseName)
		img, err := e.resolve(ctx, baseName)
		if err != nil {
			return nil, e.df.errAt(sn.from, err)
		}
		if err := st.setBase(img, e.dry); err != nil {
			return nil, e.df.errAt(sn.from, fmt.Errorf("base image %s: %w", baseName, err))
		}
		if len(st.cfg.Config.OnBuild) > 0 {
			return nil, e.df.errAt(sn.from, fmt.Errorf("base image %s has ONBUILD triggers, which the native engine does not run; use --engine buildkit", baseName))
		}
	}
	if st.cfg.OS == "" {
		st.cfg.OS = e.platform.OS
	}
	if st.cfg.Architecture == "" {
		st.cfg.Architecture = e.platform.Architecture
		st.cfg.Variant = e.platform.Variant
	}
	st.cfg.Created = v1.Time{Time: e.epoch}
	st.vars.fromSlice(st.cfg.Config.Env)
	if len(st.cfg.Config.Shell) > 0 {
		st.shell = slices.Clone(st.cfg.Config.Shell)
	}
	return st, nil
}

func (st *stage) setBase(img v1.Image, dry bool) error {
	if dry || img == nil {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
		return nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("reading manifest: %w", err)
	}
	st.base = img
	st.cfg = cf.DeepCopy()
	if mt == types.DockerManifestSchema2 {
		st.layerMT = types.DockerLayer
	} else {
		st.layerMT, st.oci = types.OCILayer, true
	}
	return nil
}

func (e *evaluator) stageByName(name string) *stage {
	for _, s := range e.stages {
		if s.name != "" && s.name == strings.ToLower(name) {
			return s
		}
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 && n < len(e.stages) {
		return e.stages[n]
	}
	return nil
}

// image assembles the stage's image: base + new layers + config.
func (st *stage) image() (v1.Image, error) {
	if st.img != nil {
		return st.img, nil
	}
	base := st.base
	if base == nil {
		base = emptyImage(st.oci)
	}
	img, err := mutate.Append(base, st.adds...)
	if err != nil {
		return nil, fmt.Errorf("assembling image: %w", err)
	}
	// The config we kept has the right history and diff IDs already.
	if img, err = mutate.ConfigFile(img, st.cfg); err != nil {
		return nil, fmt.Errorf("assembling image config: %w", err)
	}
	st.img = img
	return img, nil
}

// expand expands the instruction's words with the stage's variables.
// unmatched collects names that had no value.
func (e *evaluator) expand(st *stage, cmd any, unmatched map[string]struct{}) error {
	if _, isArg := cmd.(*instructions.ArgCommand); isArg {
		return nil
	}
	ex, ok := cmd.(instructions.SupportsSingleWordExpansion)
	if !ok {
		return nil
	}
	return ex.Expand(func(word string) (string, error) {
		w, um, err := e.lex.ProcessWord(word, st.vars)
		for k := range um {
			unmatched[k] = struct{}{}
		}
		return w, err
	})
}

func (e *evaluator) history(st *stage, code string, empty bool) {
	st.cfg.History = append(st.cfg.History, v1.History{
		Created:    v1.Time{Time: e.epoch},
		CreatedBy:  code + " # labreg",
		EmptyLayer: empty,
	})
}

func (e *evaluator) dispatch(ctx context.Context, st *stage, nd *node) error {
	ins, err := instructions.ParseInstruction(nd.n)
	if err != nil {
		return cleanParseErr(err)
	}
	unmatched := map[string]struct{}{}
	if err := e.expand(st, ins, unmatched); err != nil {
		return err
	}
	code := strings.TrimSpace(nd.n.Original)
	c := &st.cfg.Config
	switch cmd := ins.(type) {
	case *instructions.RunCommand:
		return ErrNeedsRun
	case *instructions.EnvCommand:
		for _, kv := range cmd.Env {
			st.vars.Set(kv.Key, kv.Value)
			c.Env = setEnv(c.Env, kv.Key, kv.Value)
		}
	case *instructions.ArgCommand:
		for _, kv := range cmd.Args {
			if v, ok := e.args[kv.Key]; ok {
				st.vars.Set(kv.Key, v)
				continue
			}
			if kv.Value == nil {
				if v, ok := e.meta.Get(kv.Key); ok {
					st.vars.Set(kv.Key, v)
				}
				continue
			}
			v, _, err := e.lex.ProcessWord(*kv.Value, st.vars)
			if err != nil {
				return err
			}
			st.vars.Set(kv.Key, v)
		}
	case *instructions.LabelCommand:
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		for _, kv := range cmd.Labels {
			c.Labels[kv.Key] = kv.Value
		}
	case *instructions.MaintainerCommand:
		st.cfg.Author = cmd.Maintainer
	case *instructions.WorkdirCommand:
		p := cmd.Path
		if !path.IsAbs(p) {
			p = path.Join("/", c.WorkingDir, p)
		}
		c.WorkingDir = path.Clean(p)
	case *instructions.UserCommand:
		c.User = cmd.User
	case *instructions.ExposeCommand:
		if c.ExposedPorts == nil {
			c.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range cmd.Ports {
			p, _, err := e.lex.ProcessWord(p, st.vars)
			if err != nil {
				return err
			}
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			num, proto, _ := strings.Cut(p, "/")
			if _, err := strconv.ParseUint(num, 10, 16); err != nil || (proto != "tcp" && proto != "udp" && proto != "sctp") {
				return fmt.Errorf("invalid port %q", p)
			}
			c.ExposedPorts[p] = struct{}{}
		}
	case *instructions.VolumeCommand:
		if c.Volumes == nil {
			c.Volumes = map[string]struct{}{}
		}
		for _, v := range cmd.Volumes {
			if v == "" {
				return errors.New("VOLUME specified can not be an empty string")
			}
			c.Volumes[v] = struct{}{}
		}
	case *instructions.StopSignalCommand:
		c.StopSignal = cmd.Signal
	case *instructions.ShellCommand:
		st.shell = slices.Clone(cmd.Shell)
		c.Shell = slices.Clone(cmd.Shell)
	case *instructions.CmdCommand:
		c.Cmd = st.cmdLine(cmd.ShellDependantCmdLine)
		st.cmdSet = true
	case *instructions.EntrypointCommand:
		c.Entrypoint = st.cmdLine(cmd.ShellDependantCmdLine)
		if !st.cmdSet {
			c.Cmd = nil
		}
	case *instructions.HealthCheckCommand:
		h := cmd.Health
		c.Healthcheck = &v1.HealthConfig{
			Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
			StartPeriod: h.StartPeriod, Retries: h.Retries,
		}
	case *instructions.OnbuildCommand:
		c.OnBuild = append(c.OnBuild, cmd.Expression)
	case *instructions.CopyCommand:
		if len(cmd.SourceContents) > 0 {
			return errors.New("heredoc sources are not supported by the native engine")
		}
		if len(cmd.ExcludePatterns) > 0 || cmd.Parents {
			return errors.New("--exclude and --parents are not supported by the native engine")
		}
		return e.copy(ctx, st, code, cmd.From, cmd.SourcePaths, cmd.DestPath, cmd.Chown, cmd.Chmod, false, unmatched)
	case *instructions.AddCommand:
		if len(cmd.SourceContents) > 0 {
			return errors.New("heredoc sources are not supported by the native engine")
		}
		if cmd.Checksum != "" || len(cmd.ExcludePatterns) > 0 {
			return errors.New("--checksum and --exclude are not supported by the native engine")
		}
		for _, s := range cmd.SourcePaths {
			if strings.Contains(s, "://") || strings.HasPrefix(s, "git@") {
				return fmt.Errorf("source %q: remote sources are not supported by the native engine (offline); use COPY with a local file", s)
			}
		}
		unpack := cmd.Unpack == nil || *cmd.Unpack
		return e.copy(ctx, st, code, "", cmd.SourcePaths, cmd.DestPath, cmd.Chown, cmd.Chmod, unpack, unmatched)
	default:
		return fmt.Errorf("not supported by the native engine")
	}
	e.history(st, code, true)
	return nil
}

func (st *stage) cmdLine(c instructions.ShellDependantCmdLine) []string {
	if c.PrependShell {
		return append(slices.Clone(st.shell), strings.Join(c.CmdLine, " "))
	}
	return slices.Clone(c.CmdLine)
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if kk, _, _ := strings.Cut(kv, "="); kk == k {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}
