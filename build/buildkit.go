package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	solvererrdefs "github.com/moby/buildkit/solver/errdefs"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"
)

// DockerAddr as NewBuildKit's address selects the Docker Engine's
// embedded BuildKit without trying a buildkitd first.
const DockerAddr = "docker"

// DefaultBuildKitAddr is where a root buildkitd listens by default; it is
// used when NewBuildKit gets an empty address.
const DefaultBuildKitAddr = "unix:///run/buildkit/buildkitd.sock"

// BuildKit is the engine that builds Dockerfiles with BuildKit's
// dockerfile.v0 frontend, on a buildkitd or on the BuildKit embedded in the
// Docker Engine. It handles every Dockerfile, RUN included.
type BuildKit struct {
	c        *client.Client
	addr     string
	progress io.Writer
	// creds overrides the docker CLI config as the source of registry
	// credentials (WithDockerConfig).
	creds *configfile.ConfigFile
	// docker is set when c talks to the Docker Engine's embedded BuildKit:
	// the image is exported into the engine's image store and pushed with
	// the Engine API.
	docker *dockerEngine
}

var _ SelfPublisher = (*BuildKit)(nil)

// BuildKitOption configures NewBuildKit and NewDockerBuildKit.
type BuildKitOption func(*BuildKit)

// WithDockerConfig makes the engine take registry credentials from cfg.
// Default: the docker CLI config (DOCKER_CONFIG or ~/.docker/config.json,
// with its credential helpers), read at each Build.
func WithDockerConfig(cfg *configfile.ConfigFile) BuildKitOption {
	return func(b *BuildKit) { b.creds = cfg }
}

// connectTimeout bounds the first round trip to a BuildKit daemon.
const connectTimeout = 5 * time.Second

// NewBuildKit connects to BuildKit and returns an engine that writes
// BuildKit's progress display to progress (a TTY display when progress is
// a terminal, plain text otherwise; nil discards it).
//
// addr is a buildkitd address (unix://, tcp://, docker-container://…; the
// CLI passes --buildkit-addr), or DockerAddr. Empty means $BUILDKIT_HOST,
// and DefaultBuildKitAddr when that is unset. When no buildkitd answers
// there, the Docker Engine's embedded BuildKit (DOCKER_HOST or the default
// socket) is used instead and a notice saying so goes to progress. The
// error names both when neither answers. Close the engine when done.
func NewBuildKit(ctx context.Context, addr string, progress io.Writer, opts ...BuildKitOption) (*BuildKit, error) {
	if progress == nil {
		progress = io.Discard
	}
	if addr == "" {
		addr = os.Getenv("BUILDKIT_HOST")
	}
	if addr == "" {
		addr = DefaultBuildKitAddr
	}
	if addr == DockerAddr {
		return NewDockerBuildKit(ctx, progress, opts...)
	}
	bk, bkErr := dialBuildkitd(ctx, addr, progress)
	if bkErr == nil {
		for _, o := range opts {
			o(bk)
		}
		return bk, nil
	}
	bk, dErr := NewDockerBuildKit(ctx, progress, opts...)
	if dErr != nil {
		return nil, fmt.Errorf("no BuildKit to build with: %w; %w", bkErr, dErr)
	}
	fmt.Fprintf(progress, "buildkitd at %s is not reachable (%v); building with the Docker Engine's embedded BuildKit\n", addr, bkErr)
	return bk, nil
}

// dialBuildkitd connects to a buildkitd at addr and checks that it answers.
func dialBuildkitd(ctx context.Context, addr string, progress io.Writer) (*BuildKit, error) {
	if isUnixSocketMissing(ctx, addr) {
		return nil, fmt.Errorf("connecting to buildkitd at %s: nothing listens there", addr)
	}
	c, err := client.New(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to buildkitd at %s: %w", addr, err)
	}
	if err := ping(ctx, c); err != nil {
		c.Close()
		return nil, fmt.Errorf("connecting to buildkitd at %s: %w", addr, err)
	}
	return &BuildKit{c: c, addr: addr, progress: progress}, nil
}

// ping asks the daemon for its workers, which every BuildKit version since
// the Docker Engine 20.10 one answers, and fails when there is none.
func ping(ctx context.Context, c *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	ws, err := c.ListWorkers(ctx)
	if err != nil {
		return err
	}
	if len(ws) == 0 {
		return errors.New("it has no workers")
	}
	return nil
}

// Addr says what the engine is connected to: a buildkitd address or
// "docker" followed by the Engine's address.
func (b *BuildKit) Addr() string { return b.addr }

// Close ends the connection to BuildKit (and to the Docker Engine). It is
// safe on a nil *BuildKit, which a failed NewBuildKit returns.
func (b *BuildKit) Close() error {
	if b == nil {
		return nil
	}
	err := b.c.Close()
	if b.docker != nil {
		err = errors.Join(err, b.docker.Close())
	}
	return err
}

// BuildAndPublish solves p's Dockerfile and lets BuildKit publish the
// result: to a *Registry it pushes to p.Ref (with the docker config's
// credentials, WithDockerConfig, not the Registry's Keychain), to a
// *Layout it writes the OCI layout Layout.Dir (a directory, or a tar
// archive when the name ends in ".tar"). Other publishers are an error:
// BuildKit hands over no image. Result.Uploaded stays 0: BuildKit does not
// report how many blobs a push sent.
func (b *BuildKit) BuildAndPublish(ctx context.Context, p *Plan, to Publisher) (Result, error) {
	res := Result{Ref: p.Target.Ref}
	var push bool
	var layoutDir string
	switch to := to.(type) {
	case *Registry:
		push = true
	case *Layout:
		if to.Dir == "" {
			return res, errNoOutput
		}
		layoutDir = to.Dir
	default:
		return res, fmt.Errorf("BuildKit publishes to a registry or an OCI layout, not to a %T", to)
	}
	if p.Context == "" {
		return res, errors.New("build target has no context directory")
	}
	if p.Ref == nil {
		return res, errNoRef
	}
	t := p.Target
	dockerfile := p.Dockerfile.Path
	contextFS, err := fsutil.NewFS(t.Context)
	if err != nil {
		return res, fmt.Errorf("opening build context %s: %w", t.Context, err)
	}
	dockerfileFS, err := fsutil.NewFS(filepath.Dir(dockerfile))
	if err != nil {
		return res, fmt.Errorf("opening Dockerfile directory: %w", err)
	}

	attrs := map[string]string{"filename": filepath.Base(dockerfile)}
	for k, v := range t.BuildArgs {
		attrs["build-arg:"+k] = v
	}
	cfg := b.creds
	if cfg == nil {
		cfg = dockerconfig.LoadDefaultConfigFile(b.progress)
	}
	opt := client.SolveOpt{
		Frontend:      "dockerfile.v0",
		FrontendAttrs: attrs,
		LocalMounts: map[string]fsutil.FS{
			"context":    contextFS,
			"dockerfile": dockerfileFS,
		},
		Session: []session.Attachable{authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
			AuthConfigProvider: authprovider.LoadAuthConfig(cfg),
		})},
	}
	var closeOutput func() error
	switch {
	case b.docker != nil:
		if !push {
			if err := checkDockerLayout(layoutDir); err != nil {
				return res, err
			}
		}
		// The classic image store of Docker Engine 20.10 takes images
		// only through its "moby" exporter; pushing (or saving to a
		// layout) goes through the Engine API afterwards.
		opt.Exports = []client.ExportEntry{{Type: "moby", Attrs: map[string]string{"name": t.Ref}}}
	case push:
		ex := map[string]string{"name": t.Ref, "push": "true"}
		if t.Insecure {
			ex[string(exptypes.OptKeyInsecure)] = "true"
		}
		opt.Exports = []client.ExportEntry{{Type: client.ExporterImage, Attrs: ex}}
	default:
		ex, closer, err := ociExport(t.Ref, layoutDir)
		if err != nil {
			return res, err
		}
		opt.Exports = []client.ExportEntry{ex}
		closeOutput = closer
	}

	resp, failed, err := b.solve(ctx, opt)
	if closeOutput != nil {
		err = errors.Join(err, closeOutput())
	}
	if err != nil {
		if closeOutput != nil {
			os.Remove(layoutDir) // a partial archive
		}
		return res, dockerfileError(dockerfile, t.BuildArgs, failed, err)
	}
	if b.docker != nil {
		if push {
			res.Digest, err = b.docker.push(ctx, t.Ref, cfg, b.progress)
		} else {
			res.Digest, err = b.docker.saveLayout(ctx, t.Ref, layoutDir)
		}
		return res, err
	}
	res.Digest = resp.ExporterResponse[exptypes.ExporterImageDigestKey]
	if res.Digest == "" {
		return res, fmt.Errorf("building %s: BuildKit reported no image digest", t.Ref)
	}
	return res, nil
}

// ociExport is the export entry writing ref to the OCI layout dir.
func ociExport(ref, dir string) (client.ExportEntry, func() error, error) {
	attrs := map[string]string{"name": ref}
	if strings.HasSuffix(dir, ".tar") {
		f, err := os.Create(dir)
		if err != nil {
			return client.ExportEntry{}, nil, fmt.Errorf("creating OCI layout archive: %w", err)
		}
		return client.ExportEntry{
			Type:  client.ExporterOCI,
			Attrs: attrs,
			Output: func(map[string]string) (io.WriteCloser, error) {
				return nopCloser{f}, nil
			},
		}, f.Close, nil
	}
	attrs["tar"] = "false"
	return client.ExportEntry{Type: client.ExporterOCI, Attrs: attrs, OutputDir: dir}, nil, nil
}

// nopCloser keeps BuildKit from closing the archive before Build checks
// the close error itself.
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// solve runs one solve while BuildKit's progress display renders its
// status stream to b.progress. It also returns the names of the vertices
// that failed, to locate errors that carry no source range.
func (b *BuildKit) solve(ctx context.Context, opt client.SolveOpt) (*client.SolveResponse, []string, error) {
	mode := progressui.PlainMode
	if f, ok := b.progress.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		mode = progressui.TtyMode
	}
	if b.progress == io.Discard {
		mode = progressui.QuietMode
	}
	display, err := progressui.NewDisplay(b.progress, mode)
	if err != nil {
		return nil, nil, fmt.Errorf("starting progress display: %w", err)
	}
	statusCh := make(chan *client.SolveStatus)
	displayCh := make(chan *client.SolveStatus)
	var (
		resp   *client.SolveResponse
		failed []string
	)
	eg, ectx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		var err error
		resp, err = b.c.Solve(ectx, nil, opt, statusCh)
		return err
	})
	eg.Go(func() error {
		defer close(displayCh)
		for st := range statusCh {
			for _, v := range st.Vertexes {
				if v.Error != "" {
					failed = append(failed, v.Name)
				}
			}
			displayCh <- st
		}
		return nil
	})
	eg.Go(func() error {
		// The display must drain its channel to the end even when ectx
		// is cancelled, so it gets the parent context.
		_, err := display.UpdateFrom(context.WithoutCancel(ctx), displayCh)
		for range displayCh {
			// A display that stopped early must not block the solve.
		}
		return err
	})
	if err := eg.Wait(); err != nil {
		return nil, failed, err
	}
	return resp, failed, nil
}

// causeMessage trims the gRPC decoration BuildKit errors carry and says
// how to fix the one error a plain-HTTP registry causes.
func causeMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"rpc error: code = Unknown desc = ", "failed to solve: ", "failed to solve with frontend dockerfile.v0: ", "failed to create LLB definition: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	if strings.Contains(msg, "server gave HTTP response to HTTPS client") {
		msg += httpRegistryHint
	}
	return msg
}

// httpRegistryHint explains plain-HTTP pulls: BuildKit uses plain HTTP on
// its own only for localhost/127.0.0.0/8 registries; registry.insecure
// covers pushes, not the FROM images a build pulls.
const httpRegistryHint = ` (BuildKit pulls over plain HTTP only from localhost and 127.0.0.0/8: for another plain-HTTP registry add [registry."HOST:PORT"] http = true to buildkitd.toml, or "insecure-registries" to the Docker Engine's daemon.json)`

// solveError is a BuildKit error with its message cleaned by causeMessage;
// errors.As still reaches BuildKit's typed errors through it.
type solveError struct {
	msg string
	err error
}

func (e *solveError) Error() string { return e.msg }
func (e *solveError) Unwrap() error { return e.err }

// dockerfileError turns a solve error into a DockerfileError
// ("FILE:LINE: RUN: cause") when it can be located in the Dockerfile:
// from the source range BuildKit attaches (BuildKit 0.9 and later), or
// else by matching the failed vertices' names (older BuildKit such as
// Docker Engine 20.10's) against the Dockerfile's instructions. Other
// errors are wrapped with what was being done.
func dockerfileError(dockerfile string, buildArgs map[string]string, failed []string, err error) error {
	cause := &solveError{msg: causeMessage(err), err: err}
	for _, src := range solvererrdefs.Sources(err) {
		if src.Info == nil || len(src.Ranges) == 0 {
			continue
		}
		line := int(src.Ranges[0].Start.Line)
		de := &DockerfileError{File: dockerfile, Line: line, Err: cause}
		if lines := strings.Split(string(src.Info.Data), "\n"); line >= 1 && line <= len(lines) {
			if f := strings.Fields(lines[line-1]); len(f) > 0 {
				de.Instruction = strings.ToUpper(f[0])
			}
		}
		return de
	}
	if line, instr, ok := locateFailure(dockerfile, buildArgs, failed, cause.msg); ok {
		return &DockerfileError{File: dockerfile, Line: line, Instruction: instr, Err: cause}
	}
	return fmt.Errorf("building %s: %w", dockerfile, cause)
}

// stepPrefix is the "[stage 2/3] " BuildKit puts before an instruction in
// a vertex name.
var stepPrefix = regexp.MustCompile(`^(\[[^\]]*\]\s*)+`)

// locateFailure finds the Dockerfile instruction a failed vertex ran (its
// name is the instruction's text), or else the FROM whose image (with
// build args and ARG defaults before the first FROM expanded) the error
// message or a failed vertex names.
func locateFailure(dockerfile string, buildArgs map[string]string, failed []string, msg string) (int, string, bool) {
	f, err := os.Open(dockerfile)
	if err != nil {
		return 0, "", false
	}
	defer f.Close()
	parsed, err := parser.Parse(f)
	if err != nil {
		return 0, "", false
	}
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for i := len(failed) - 1; i >= 0; i-- {
		name := norm(stepPrefix.ReplaceAllString(failed[i], ""))
		for _, n := range parsed.AST.Children {
			if norm(n.Original) == name {
				return n.StartLine, strings.ToUpper(n.Value), true
			}
		}
	}
	// A base that cannot be resolved fails in "load metadata for IMAGE".
	haystack := msg + "\n" + strings.Join(failed, "\n")
	args := map[string]string{}
	lex := shell.NewLex(parsed.EscapeToken)
	sawFrom := false
	for _, n := range parsed.AST.Children {
		switch {
		case strings.EqualFold(n.Value, "arg") && !sawFrom:
			for a := n.Next; a != nil; a = a.Next {
				k, v, _ := strings.Cut(a.Value, "=")
				args[k] = v
			}
		case strings.EqualFold(n.Value, "from") && n.Next != nil:
			if !sawFrom {
				sawFrom = true
				maps.Copy(args, buildArgs)
			}
			img := n.Next.Value
			env := make([]string, 0, len(args))
			for k, v := range args {
				env = append(env, k+"="+v)
			}
			if expanded, _, err := lex.ProcessWord(img, shell.EnvsFromSlice(env)); err == nil {
				img = expanded
			}
			if img != "" && strings.Contains(haystack, img) {
				return n.StartLine, "FROM", true
			}
		}
	}
	return 0, "", false
}

// isUnixSocketMissing reports whether addr is a unix socket nobody
// listens on, to say so plainly instead of with a gRPC timeout.
func isUnixSocketMissing(ctx context.Context, addr string) bool {
	p, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", p)
	if err != nil {
		return true
	}
	c.Close()
	return false
}
