package build

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/moby/api/types/registry"
	dockerclient "github.com/moby/moby/client"
)

// dockerEngine is the Docker Engine whose embedded BuildKit a BuildKit
// engine talks to. Its classic image store (Engine 20.10 and later without
// the containerd store) takes build results only through the "moby"
// exporter, so pushing and writing OCI layouts go through the Engine API.
type dockerEngine struct {
	api *dockerclient.Client
}

func (d *dockerEngine) Close() error { return d.api.Close() }

// NewDockerBuildKit returns a BuildKit engine on the Docker Engine's
// embedded BuildKit, reached like docker/buildx's "docker" driver does:
// BuildKit's gRPC API over the Engine API's hijacked /grpc endpoint
// (upgraded to h2c) and the build session over /session. The Engine is
// found from DOCKER_HOST (and DOCKER_API_VERSION, DOCKER_CERT_PATH,
// DOCKER_TLS_VERIFY) or the default socket. Progress goes to progress.
func NewDockerBuildKit(ctx context.Context, progress io.Writer, opts ...BuildKitOption) (*BuildKit, error) {
	if progress == nil {
		progress = io.Discard
	}
	api, err := dockerclient.New(dockerclient.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("connecting to the Docker Engine: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if _, err := api.Ping(pctx, dockerclient.PingOptions{NegotiateAPIVersion: true}); err != nil {
		api.Close()
		return nil, fmt.Errorf("connecting to the Docker Engine at %s: %w", api.DaemonHost(), err)
	}
	c, err := bkclient.New(ctx, "",
		bkclient.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return api.DialHijack(ctx, "/grpc", "h2c", nil)
		}),
		bkclient.WithSessionDialer(func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
			return api.DialHijack(ctx, "/session", proto, meta)
		}),
	)
	if err != nil {
		api.Close()
		return nil, fmt.Errorf("connecting to the Docker Engine's BuildKit at %s: %w", api.DaemonHost(), err)
	}
	if err := ping(ctx, c); err != nil {
		c.Close()
		api.Close()
		return nil, fmt.Errorf("connecting to the Docker Engine's BuildKit at %s (BuildKit needs Engine 18.09 or later with the API's /grpc endpoint): %w", api.DaemonHost(), err)
	}
	bk := &BuildKit{c: c, addr: DockerAddr + " " + api.DaemonHost(), progress: progress, docker: &dockerEngine{api: api}}
	for _, o := range opts {
		o(bk)
	}
	return bk, nil
}

// push pushes ref with the Engine API, authenticated with the docker
// config's credentials for ref's registry, and returns the manifest
// digest the Engine reports. The Engine decides plain HTTP by itself
// (its insecure-registries, which include 127.0.0.0/8).
func (d *dockerEngine) push(ctx context.Context, ref string, cfg *configfile.ConfigFile, progress io.Writer) (string, error) {
	auth, err := registryAuth(ref, cfg)
	if err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	resp, err := d.api.ImagePush(ctx, ref, dockerclient.ImagePushOptions{RegistryAuth: auth})
	if err != nil {
		return "", fmt.Errorf("pushing %s with the Docker Engine: %w", ref, err)
	}
	defer resp.Close()
	var dgst string
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return "", fmt.Errorf("pushing %s with the Docker Engine: %w", ref, err)
		}
		if msg.Error != nil {
			m := msg.Error.Message
			if strings.Contains(m, "server gave HTTP response to HTTPS client") {
				m += ` (the Docker Engine pushes over plain HTTP only to its "insecure-registries", 127.0.0.0/8 by default: add this registry to them in daemon.json)`
			}
			return "", fmt.Errorf("pushing %s with the Docker Engine: %s", ref, m)
		}
		if msg.Aux != nil {
			var aux struct{ Digest string }
			if json.Unmarshal(*msg.Aux, &aux) == nil && aux.Digest != "" {
				dgst = aux.Digest
			}
			continue
		}
		if msg.Progress == nil && msg.Status != "" {
			if msg.ID != "" {
				fmt.Fprintf(progress, "%s: %s\n", msg.ID, msg.Status)
			} else {
				fmt.Fprintln(progress, msg.Status)
			}
		}
	}
	if dgst == "" {
		return "", fmt.Errorf("pushing %s with the Docker Engine: the Engine reported no digest", ref)
	}
	return dgst, nil
}

// registryAuth is the X-Registry-Auth value for ref's registry from the
// docker config (credential helpers included). It is sent even without
// credentials ("{}"): Engine 20.10 rejects a push without the header.
func registryAuth(ref string, cfg *configfile.ConfigFile) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("parsing reference %q: %w", ref, err)
	}
	host := reference.Domain(named)
	if host == "docker.io" {
		host = "https://index.docker.io/v1/"
	}
	ac, err := cfg.GetAuthConfig(host)
	if err != nil {
		return "", fmt.Errorf("reading credentials for %s: %w", host, err)
	}
	if ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return base64.URLEncoding.EncodeToString([]byte("{}")), nil
	}
	buf, err := json.Marshal(registry.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		ServerAddress: ac.ServerAddress,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	})
	if err != nil {
		return "", err
	}
	return base64.URLEncoding.EncodeToString(buf), nil
}

// checkDockerLayout rejects layouts saveLayout cannot write, before building.
func checkDockerLayout(dir string) error {
	if strings.HasSuffix(dir, ".tar") {
		return fmt.Errorf("writing %s: through the Docker Engine labreg writes OCI layout directories, not archives (use a buildkitd for archives)", dir)
	}
	return nil
}

// saveLayout exports ref from the Engine (docker save) and writes it into
// the OCI layout directory dir with the Layout publisher, returning its
// manifest digest. The classic store cannot export OCI archives itself.
func (d *dockerEngine) saveLayout(ctx context.Context, ref, dir string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("parsing reference %q: %w", ref, err)
	}
	tmp, err := os.CreateTemp("", "labreg-save-*.tar")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	rc, err := d.api.ImageSave(ctx, []string{ref})
	if err != nil {
		return "", fmt.Errorf("saving %s from the Docker Engine: %w", ref, err)
	}
	_, err = io.Copy(tmp, rc)
	rc.Close()
	if err != nil {
		return "", fmt.Errorf("saving %s from the Docker Engine: %w", ref, err)
	}
	img, err := tarball.ImageFromPath(tmp.Name(), &tag)
	if err != nil {
		return "", fmt.Errorf("reading the saved image %s: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return "", err
	}
	res, err := (&Layout{Dir: dir}).Publish(ctx, img, &Plan{Target: Target{Ref: ref}, Ref: tag})
	return res.Digest, err
}
