package build

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// NativeOptions configure NewNative. The zero value is ready to use.
type NativeOptions struct {
	// Progress receives one line per step. Default: discarded.
	Progress io.Writer
	// Keychain gives registry credentials. Default: authn.DefaultKeychain
	// (the docker config and its credential helpers).
	Keychain authn.Keychain
	// Platform of the images built and of the bases pulled. Default
	// linux/GOARCH of this binary.
	Platform *v1.Platform
	// Epoch is every timestamp in the image (layer entries, history,
	// created). Default: $SOURCE_DATE_EPOCH, else the Unix epoch (0).
	Epoch *time.Time
	// Transport for registry requests. Default: remote.DefaultTransport.
	Transport http.RoundTripper
}

// Native is the daemonless engine: it assembles images from a base image
// and local files with go-containerregistry, and builds any Dockerfile
// that needs no RUN. Images of this run published to an OCI layout serve
// as bases of later builds. Close it when its images are published.
type Native struct {
	progress  io.Writer
	keychain  authn.Keychain
	platform  v1.Platform
	epoch     time.Time
	transport http.RoundTripper

	mu    sync.Mutex
	built map[string]v1.Image // by reference name, for FROM of an earlier target
	tmp   string              // temporary directory, made when first needed
}

var _ Engine = (*Native)(nil)

// NewNative returns the native engine.
func NewNative(o NativeOptions) (*Native, error) {
	n := &Native{
		progress:  o.Progress,
		keychain:  o.Keychain,
		transport: o.Transport,
		platform:  v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		built:     map[string]v1.Image{},
	}
	if n.progress == nil {
		n.progress = io.Discard
	}
	if n.keychain == nil {
		n.keychain = authn.DefaultKeychain
	}
	if n.transport == nil {
		n.transport = remote.DefaultTransport
	}
	if o.Platform != nil {
		n.platform = *o.Platform
	}
	if o.Epoch != nil {
		n.epoch = *o.Epoch
	} else {
		e, err := SourceDateEpoch()
		if err != nil {
			return nil, err
		}
		n.epoch = e
	}
	return n, nil
}

// SourceDateEpoch returns $SOURCE_DATE_EPOCH as a time, or the Unix epoch
// when it is unset.
func SourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Build builds p's image. A Dockerfile with RUN is an error
// (ErrNeedsRun): only BuildKit runs containers.
func (n *Native) Build(ctx context.Context, p *Plan) (Artifact, error) {
	df := p.Dockerfile
	if line, ok := df.HasRun(); ok {
		return nil, &DockerfileError{File: df.Path, Line: line, Instruction: "RUN", Err: ErrNeedsRun}
	}
	if p.Ref == nil {
		return nil, errNoRef
	}
	cctx, err := openContext(p.Context)
	if err != nil {
		return nil, err
	}
	tmp, err := n.tmpDir()
	if err != nil {
		return nil, err
	}
	epoch := n.epoch
	if s, ok := p.BuildArgs["SOURCE_DATE_EPOCH"]; ok {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--build-arg SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
		}
		epoch = time.Unix(sec, 0).UTC()
	}
	ev := &evaluator{
		df: df, ctxDir: cctx, args: p.BuildArgs, platform: n.platform, epoch: epoch,
		tmpDir: tmp, progress: n.progress, name: shortName(p.Ref),
		resolve: func(ctx context.Context, s string) (v1.Image, error) {
			return n.pull(ctx, s, p.Ref, p.Insecure)
		},
	}
	return ev.run(ctx)
}

// tmpDir is where layers bigger than memLimit are spooled. They are read
// again when the image is published, and when a later build uses it as a
// local base, so the directory lives until Close.
func (n *Native) tmpDir() (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tmp == "" {
		dir, err := os.MkdirTemp("", "labreg-build-")
		if err != nil {
			return "", fmt.Errorf("creating a temporary directory: %w", err)
		}
		n.tmp = dir
	}
	return n.tmp, nil
}

// Close removes the engine's temporary files: the images it built cannot
// be published after that.
func (n *Native) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.tmp == "" {
		return nil
	}
	err := os.RemoveAll(n.tmp)
	n.tmp = ""
	return err
}

// addLocal makes img, built from p and published where pulls do not reach
// it (an OCI layout), the image later FROMs of p.Ref get. Images pushed to
// a registry are pulled back instead, so that their layers are mounted
// across repositories rather than uploaded again.
func (n *Native) addLocal(p *Plan, a Artifact) {
	img, ok := a.(v1.Image)
	if !ok {
		return
	}
	n.mu.Lock()
	n.built[p.Ref.Name()] = img
	n.mu.Unlock()
}

// pull resolves a base image: one built earlier by this engine, else the
// registry (insecure when it is the target's registry and that is).
func (n *Native) pull(ctx context.Context, s string, target name.Reference, insecure bool) (v1.Image, error) {
	opts := []name.Option{}
	if r, err := name.ParseReference(s); err == nil && insecure && r.Context().RegistryStr() == target.Context().RegistryStr() {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return nil, fmt.Errorf("base image %q: %w", s, err)
	}
	n.mu.Lock()
	img, ok := n.built[ref.Name()]
	n.mu.Unlock()
	if ok {
		return img, nil
	}
	img, err = remote.Image(ref,
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(n.keychain),
		remote.WithPlatform(n.platform),
		remote.WithTransport(n.transport),
	)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("base image %s is not in the registry (build its directory in the same run, e.g. labreg build images/, and it is built first): %w", s, err)
		}
		return nil, fmt.Errorf("pulling base image %s: %w", s, err)
	}
	return img, nil
}

func parseRef(s string, insecure bool) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.NewTag(s, opts...)
	if err != nil {
		return nil, fmt.Errorf("image name %q: %w", s, err)
	}
	return ref, nil
}

// shortName is "repo:tag" for progress lines.
func shortName(ref name.Reference) string {
	return ref.Context().RepositoryStr() + ":" + ref.Identifier()
}

// emptyImage is the scratch base: no layers, OCI or Docker media types.
func emptyImage(oci bool) v1.Image {
	if oci {
		return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	return empty.Image
}

func newGzipReader(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
