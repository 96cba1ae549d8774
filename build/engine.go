// Package build turns image directories (a Dockerfile and its context) into
// OCI images and publishes them, in three steps kept apart like ko's
// build.Interface and publish.Interface: NewPlan parses and checks a
// Dockerfile once; an Engine builds the plan into an image; a Publisher
// pushes it to a registry (Registry) or writes it to an OCI layout
// (Layout). Builder runs the steps for many targets, bases first.
//
// Two engines: a daemonless native engine built on go-containerregistry
// for Dockerfiles without RUN, and BuildKit (a buildkitd, or the Docker
// Engine's embedded BuildKit) for the rest. BuildKit's exporters push and
// write layouts themselves, so it is a SelfPublisher: it takes the
// publisher as the destination instead of handing an image over.
package build

import (
	"context"
	"errors"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultLayout is the OCI layout directory `labreg build --no-push`
// writes when not told otherwise (and where `labreg deploy` looks:
// deploy.DefaultLayout).
const DefaultLayout = "oci-layout"

// errNoOutput is every publisher's answer to a layout without a directory.
var errNoOutput = errors.New("build target is neither pushed nor given an OCI layout to write")

// Target is one image to build.
type Target struct {
	// Context is the build context directory (the image directory).
	Context string
	// Dockerfile is the Dockerfile path. Default: Context/Dockerfile.
	Dockerfile string
	// Ref is the full reference to produce, e.g. "127.0.0.1:5000/samsung:1.0".
	Ref string
	// BuildArgs are --build-arg values.
	BuildArgs map[string]string
	// Insecure allows plain HTTP to Ref's registry (for pushing and for
	// bases pulled from it). Default false, but labreg's own registry is
	// plain HTTP unless TLS is configured.
	Insecure bool
}

// Result is what publishing a build produced.
type Result struct {
	// Ref is Target.Ref; Digest is the manifest digest ("sha256:…").
	Ref    string
	Digest string
	// Uploaded counts the blobs that were actually sent (0 on a no-change
	// rebuild; always 0 for layouts and for BuildKit, which does not
	// report it).
	Uploaded int
}

// Artifact is what an engine built: a v1.Image or a v1.ImageIndex.
type Artifact interface {
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
}

// Engine builds a plan into an image (ko's build.Interface). Progress goes
// to the writer given when the engine was made, never to os.Stdout.
type Engine interface {
	Build(ctx context.Context, p *Plan) (Artifact, error)
}

// Publisher puts a built image where it is used (ko's publish.Interface):
// Registry pushes it, Layout writes it to an OCI layout directory.
type Publisher interface {
	Publish(ctx context.Context, a Artifact, p *Plan) (Result, error)
}

// SelfPublisher is an engine whose build writes its own result: BuildKit's
// exporters push or write the OCI layout, and the Docker Engine pushes
// from its image store, so handing the image to a Publisher would copy it
// once more. to says where (a *Registry or a *Layout of this package;
// other publishers are an error), and its options that the engine cannot
// honour (a Registry's Keychain and Transport) are replaced by the
// engine's own (the docker config's credentials, its daemon's transport).
type SelfPublisher interface {
	BuildAndPublish(ctx context.Context, p *Plan, to Publisher) (Result, error)
}
