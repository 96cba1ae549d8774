// Package build turns image directories (a Dockerfile and its context) into
// OCI images and pushes them to a registry. Two engines sit behind Engine:
// a daemonless native engine built on go-containerregistry for Dockerfiles
// without RUN, and BuildKit (a buildkitd, or the Docker Engine's embedded
// BuildKit) for the rest.
package build

import (
	"context"
	"errors"
	"io"
)

// DefaultLayout is the OCI layout directory `labreg build --no-push`
// writes when not told otherwise (and where `labreg deploy` looks:
// deploy.DefaultLayout).
const DefaultLayout = "oci-layout"

// errNoOutput is every engine's answer to a target that is neither pushed
// nor given an OCI layout to write.
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
	// Push sends the image to Ref's registry. When false, the image is
	// written to the OCI layout directory Layout instead, which must be set.
	Push   bool
	Layout string
	// Insecure allows plain HTTP to Ref's registry. Default false, but
	// labreg's own registry is plain HTTP unless TLS is configured.
	Insecure bool
}

// Result is what a build produced.
type Result struct {
	// Ref is Target.Ref; Digest is the manifest digest ("sha256:…").
	Ref    string
	Digest string
	// Uploaded counts the blobs that were actually sent (0 on a no-change rebuild).
	Uploaded int
}

// Engine builds a Target. Progress goes to the writer given when the
// engine was made, never to os.Stdout.
type Engine interface {
	Build(ctx context.Context, t Target) (Result, error)
}

// Progress is where engines write human-readable progress (stderr in the CLI).
type Progress = io.Writer
