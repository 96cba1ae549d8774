package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry publishes by pushing to the plan's registry (Plan.Ref). The
// zero value is ready to use.
type Registry struct {
	// Keychain gives registry credentials. Default: authn.DefaultKeychain
	// (the docker config and its credential helpers).
	Keychain authn.Keychain
	// Transport for registry requests. Default: remote.DefaultTransport.
	Transport http.RoundTripper
	// Progress receives one line per image pushed. Default: discarded.
	Progress io.Writer
}

var _ Publisher = (*Registry)(nil)

func (r *Registry) keychain() authn.Keychain {
	if r.Keychain == nil {
		return authn.DefaultKeychain
	}
	return r.Keychain
}

func (r *Registry) transport() http.RoundTripper {
	if r.Transport == nil {
		return remote.DefaultTransport
	}
	return r.Transport
}

// Publish pushes a (an image or an index) to p.Ref and counts the blobs it
// uploaded (blobs the registry had or mounted across repositories do not
// count).
func (r *Registry) Publish(ctx context.Context, a Artifact, p *Plan) (Result, error) {
	if p.Ref == nil {
		return Result{}, errNoRef
	}
	digest, err := a.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("computing the digest of %s: %w", p.Target.Ref, err)
	}
	counter := &uploadCounter{next: r.transport()}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(r.keychain()),
		remote.WithTransport(counter),
		remote.WithJobs(4),
	}
	switch a := a.(type) {
	case v1.Image:
		err = remote.Write(p.Ref, a, opts...)
	case v1.ImageIndex:
		err = remote.WriteIndex(p.Ref, a, opts...)
	default:
		err = fmt.Errorf("cannot push a %T", a)
	}
	if err != nil {
		return Result{}, fmt.Errorf("pushing %s: %w", p.Target.Ref, err)
	}
	res := Result{Ref: p.Target.Ref, Digest: digest.String(), Uploaded: int(counter.uploads.Load())}
	if r.Progress != nil {
		fmt.Fprintf(r.Progress, "%s: pushed %s (%d blobs uploaded)\n", shortName(p.Ref), digest, res.Uploaded)
	}
	return res, nil
}

// Layout publishes by writing into the OCI layout directory Dir, under the
// plan's Ref as the image's org.opencontainers.image.ref.name annotation
// (replacing an older image of that name). Images in a layout are not
// where a later FROM pulls from: the Builder hands them to the engine as
// local bases.
type Layout struct {
	// Dir is the layout directory (created when missing). Required. The
	// BuildKit engine on a buildkitd also writes an OCI layout archive
	// when Dir ends in ".tar".
	Dir string
	// Progress receives one line per image written. Default: discarded.
	Progress io.Writer
}

var _ Publisher = (*Layout)(nil)

// Publish writes a (an image or an index) into l.Dir.
func (l *Layout) Publish(_ context.Context, a Artifact, p *Plan) (Result, error) {
	if l.Dir == "" {
		return Result{}, errNoOutput
	}
	if p.Ref == nil {
		return Result{}, errNoRef
	}
	digest, err := a.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("computing the digest of %s: %w", p.Target.Ref, err)
	}
	lp, err := layout.FromPath(l.Dir)
	if err != nil {
		if lp, err = layout.Write(l.Dir, empty.Index); err != nil {
			return Result{}, fmt.Errorf("creating OCI layout %s: %w", l.Dir, err)
		}
	}
	ref := p.Target.Ref
	anns := layout.WithAnnotations(map[string]string{refNameAnnotation: ref})
	same := match.Annotation(refNameAnnotation, ref)
	switch a := a.(type) {
	case v1.Image:
		err = lp.ReplaceImage(a, same, anns)
	case v1.ImageIndex:
		err = lp.ReplaceIndex(a, same, anns)
	default:
		err = fmt.Errorf("cannot write a %T", a)
	}
	if err != nil {
		return Result{}, fmt.Errorf("writing %s to OCI layout %s: %w", ref, l.Dir, err)
	}
	if l.Progress != nil {
		fmt.Fprintf(l.Progress, "%s: wrote %s to OCI layout %s\n", shortName(p.Ref), digest, l.Dir)
	}
	return Result{Ref: ref, Digest: digest.String()}, nil
}

// errNoRef is a publisher's answer to a plan without a reference.
var errNoRef = errors.New("build target has no image reference to publish to")

// refNameAnnotation names an image in an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

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
