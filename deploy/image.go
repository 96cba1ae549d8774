package deploy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
)

// ResolveImage makes ref a full reference every node can pull: a name
// without a registry host ("myhttpd:green", "user1/centos:7") is placed
// under registryHost; a missing tag becomes "latest". References that
// already name a host (a first component with "." or ":", or "localhost")
// are kept as written.
func ResolveImage(ref, registryHost string) (string, error) {
	if ref == "" {
		return "", errors.New("no image given")
	}
	first, _, hasSlash := strings.Cut(ref, "/")
	hasHost := hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost")
	full := ref
	if !hasHost {
		if registryHost == "" {
			return "", fmt.Errorf("image %q has no registry host and no registry is configured (--registry / registry.advertise)", ref)
		}
		full = registryHost + "/" + ref
	}
	r, err := name.ParseReference(full, name.Insecure, name.StrictValidation)
	if err != nil {
		// StrictValidation rejects a missing tag; retry with defaults.
		r, err = name.ParseReference(full, name.Insecure)
		if err != nil {
			return "", fmt.Errorf("parsing image reference %q: %w", ref, err)
		}
	}
	switch r := r.(type) {
	case name.Digest:
		return full, nil
	case name.Tag:
		return r.Context().Name() + ":" + r.TagStr(), nil
	}
	return full, nil
}

// splitDigest returns the name part and digest of "repo:tag@sha256:..".
func splitDigest(image string) (string, string) {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		return image[:i], image[i+1:]
	}
	return image, ""
}

// imageHost returns the registry host of a full reference.
func imageHost(image string) string {
	r, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		return ""
	}
	return r.Context().RegistryStr()
}

// credentials are the docker CLI's stored credentials for one registry.
type credentials struct {
	host string
	auth registry.AuthConfig
}

// has reports whether any credential is stored.
func (c credentials) has() bool {
	return c.auth.Username != "" || c.auth.Password != "" || c.auth.IdentityToken != "" || c.auth.RegistryToken != ""
}

// encoded is the X-Registry-Auth header value: base64url JSON of the
// AuthConfig, as `docker service create --with-registry-auth` sends it.
func (c credentials) encoded() (string, error) {
	if !c.has() {
		return "", nil
	}
	b, err := json.Marshal(c.auth)
	if err != nil {
		return "", fmt.Errorf("encoding registry credentials for %s: %w", c.host, err)
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// authenticator is the go-containerregistry form of the credentials.
func (c credentials) authenticator() authn.Authenticator {
	if !c.has() {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      c.auth.Username,
		Password:      c.auth.Password,
		Auth:          c.auth.Auth,
		IdentityToken: c.auth.IdentityToken,
		RegistryToken: c.auth.RegistryToken,
	})
}

// String never shows the secret parts.
func (c credentials) String() string {
	if !c.has() {
		return "no credentials for " + c.host
	}
	return "credentials of " + c.auth.Username + " for " + c.host
}

// lookupCredentials reads the credentials for host from the docker CLI
// config (config.json auths or a credential helper). No stored credentials
// is not an error.
func (c *Client) lookupCredentials(host string) (credentials, error) {
	dir := c.opts.DockerConfigDir
	if dir == "" {
		// read now: dockerconfig.Dir() caches the first value it sees
		dir = os.Getenv("DOCKER_CONFIG")
	}
	if dir == "" {
		dir = dockerconfig.Dir()
	}
	cf, err := dockerconfig.Load(dir)
	if err != nil {
		return credentials{host: host}, fmt.Errorf("reading docker config in %s: %w", dir, err)
	}
	ac, err := cf.GetAuthConfig(host)
	if err != nil {
		return credentials{host: host}, fmt.Errorf("reading credentials for %s: %w", host, err)
	}
	cr := credentials{host: host, auth: registry.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		Auth:          ac.Auth,
		ServerAddress: host,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	}}
	return cr, nil
}

// authHint suggests the fix for an authentication failure.
func authHint(err error, host string, forwarded bool) string {
	m := strings.ToLower(err.Error())
	if !strings.Contains(m, "auth") && !strings.Contains(m, "denied") && !strings.Contains(m, "401") {
		return ""
	}
	if forwarded {
		return fmt.Sprintf(" (check the credentials: docker login %s)", host)
	}
	return fmt.Sprintf(" (run `docker login %s` here and keep --with-registry-auth, or log in on every node)", host)
}

// pinDigest asks the engine (the way every node will see the registry) for
// the manifest digest of image and returns "image@sha256:...". encodedAuth
// is the forwarded credential header, empty for anonymous.
func (c *Client) pinDigest(ctx context.Context, image, encodedAuth string) (string, error) {
	if _, d := splitDigest(image); d != "" {
		return image, nil
	}
	res, err := c.api.DistributionInspect(ctx, image, client.DistributionInspectOptions{EncodedRegistryAuth: encodedAuth})
	if err != nil {
		how := "with the forwarded credentials"
		if encodedAuth == "" {
			how = "without credentials (as every node pulls when registry auth is not forwarded)"
		}
		return "", fmt.Errorf("registry %s: the engine cannot read %s %s: %w%s", imageHost(image), image, how, err, authHint(err, imageHost(image), encodedAuth != ""))
	}
	return image + "@" + res.Descriptor.Digest.String(), nil
}
