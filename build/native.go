package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
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
// that needs no RUN. Images it built earlier serve as bases of later
// builds without a round trip to the registry.
type Native struct {
	progress  io.Writer
	keychain  authn.Keychain
	platform  v1.Platform
	epoch     time.Time
	transport http.RoundTripper

	mu    sync.Mutex
	built map[string]v1.Image // by reference name, for FROM of an earlier target
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

// Build builds t and pushes it (or writes it to t.Layout).
func (n *Native) Build(ctx context.Context, t Target) (Result, error) {
	if !t.Push && t.Layout == "" {
		return Result{}, errNoOutput
	}
	ref, err := parseRef(t.Ref, t.Insecure)
	if err != nil {
		return Result{}, err
	}
	df, err := Plan(t)
	if err != nil {
		return Result{}, err
	}
	if line, ok := df.HasRun(); ok {
		return Result{}, &DockerfileError{File: df.Path, Line: line, Instruction: "RUN", Err: ErrNeedsRun}
	}
	cctx, err := openContext(t.Context)
	if err != nil {
		return Result{}, err
	}
	tmp, err := os.MkdirTemp("", "labreg-build-")
	if err != nil {
		return Result{}, fmt.Errorf("creating a temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	epoch := n.epoch
	if s, ok := t.BuildArgs["SOURCE_DATE_EPOCH"]; ok {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return Result{}, fmt.Errorf("--build-arg SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
		}
		epoch = time.Unix(sec, 0).UTC()
	}
	counter := &uploadCounter{next: n.transport}
	ev := &evaluator{
		df: df, ctxDir: cctx, args: t.BuildArgs, platform: n.platform, epoch: epoch,
		tmpDir: tmp, progress: n.progress, name: shortName(ref),
		resolve: func(ctx context.Context, s string) (v1.Image, error) {
			return n.pull(ctx, s, ref, t.Insecure, counter)
		},
	}
	img, err := ev.run(ctx)
	if err != nil {
		return Result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("computing the image digest: %w", err)
	}
	res := Result{Ref: t.Ref, Digest: digest.String()}
	if t.Push {
		if err := remote.Write(ref, img,
			remote.WithContext(ctx),
			remote.WithAuthFromKeychain(n.keychain),
			remote.WithTransport(counter),
			remote.WithJobs(4),
		); err != nil {
			return Result{}, fmt.Errorf("pushing %s: %w", t.Ref, err)
		}
		res.Uploaded = int(counter.uploads.Load())
		fmt.Fprintf(n.progress, "%s: pushed %s (%d blobs uploaded)\n", shortName(ref), digest, res.Uploaded)
	} else {
		if err := writeLayout(t.Layout, t.Ref, img); err != nil {
			return Result{}, err
		}
		fmt.Fprintf(n.progress, "%s: wrote %s to OCI layout %s\n", shortName(ref), digest, t.Layout)
	}
	if !t.Push {
		// Not in a registry: later targets FROM this one take it from here.
		// Pushed images are pulled back instead, so that their layers are
		// mounted across repositories rather than uploaded again.
		n.mu.Lock()
		n.built[ref.Name()] = img
		n.mu.Unlock()
	}
	return res, nil
}

// Plan parses t's Dockerfile and checks every instruction and local source
// without building or fetching anything: a Dockerfile that passes Plan
// fails later only for reasons outside it (registry, network).
func Plan(t Target) (*Dockerfile, error) {
	dfPath := t.Dockerfile
	if dfPath == "" {
		dfPath = filepath.Join(t.Context, "Dockerfile")
	}
	df, err := ParseDockerfile(dfPath)
	if err != nil {
		return nil, err
	}
	cctx, err := openContext(t.Context)
	if err != nil {
		return nil, err
	}
	ev := &evaluator{df: df, ctxDir: cctx, args: t.BuildArgs, dry: true, progress: io.Discard}
	if _, err := ev.run(context.Background()); err != nil && !errors.Is(err, ErrNeedsRun) {
		return nil, err
	}
	return df, nil
}

// pull resolves a base image: one built earlier by this engine, else the
// registry (insecure when it is the target's registry and that is).
func (n *Native) pull(ctx context.Context, s string, target name.Reference, insecure bool, tr http.RoundTripper) (v1.Image, error) {
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
		remote.WithTransport(tr),
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

// writeLayout puts img into the OCI layout at dir under the name ref,
// replacing an older image of that name.
func writeLayout(dir, ref string, img v1.Image) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating OCI layout %s: %w", dir, err)
		}
	}
	anns := map[string]string{"org.opencontainers.image.ref.name": ref}
	if err := p.ReplaceImage(img, match.Annotation("org.opencontainers.image.ref.name", ref), layout.WithAnnotations(anns)); err != nil {
		return fmt.Errorf("writing %s to OCI layout %s: %w", ref, dir, err)
	}
	return nil
}

// emptyImage is the scratch base: no layers, OCI or Docker media types.
func emptyImage(oci bool) v1.Image {
	if oci {
		return mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	return empty.Image
}

func newGzipReader(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }

// uploadCounter counts blobs actually uploaded (completed blob uploads;
// cross-repository mounts and blobs the registry had are not counted).
type uploadCounter struct {
	next    http.RoundTripper
	uploads atomic.Int64
}

func (c *uploadCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") &&
		resp.StatusCode == http.StatusCreated {
		c.uploads.Add(1)
	}
	return resp, err
}
