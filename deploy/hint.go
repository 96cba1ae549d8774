package deploy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// pullCause is why a node could not pull, as far as its error says.
type pullCause int

const (
	causeUnknown     pullCause = iota // "No such image": swarm drops the pull error
	causeUntrusted                    // plain HTTP or an unknown CA where the node wants TLS
	causeAuth                         // no or refused credentials
	causeMissing                      // the tag or manifest is not in the registry
	causeUnreachable                  // no connection to the registry
)

// classifyPull reads a node's pull error. Swarm usually reports only "No
// such image" (the engine logs the real pull error on the node), so most
// causes are found by asking the registry (pullHint).
func classifyPull(e string) pullCause {
	e = strings.ToLower(e)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(e, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has("http response to https client", "x509:", "certificate signed by unknown authority", "tls: "):
		return causeUntrusted
	case has("no basic auth credentials", "unauthorized", "authentication required", "denied: requested access"):
		return causeAuth
	case has("manifest unknown", "not found: manifest", "manifest for "):
		return causeMissing
	case has("connection refused", "no route to host", "i/o timeout", "no such host", "network is unreachable"):
		return causeUnreachable
	}
	return causeUnknown
}

// isPullError reports whether a task error is a failed pull.
func isPullError(e string) bool {
	if classifyPull(e) != causeUnknown {
		return true
	}
	e = strings.ToLower(e)
	return strings.Contains(e, "no such image") || strings.Contains(e, "pull access denied")
}

// pullHint explains why node could not pull image and what fixes it. It
// believes the node's error when that names the cause; otherwise it asks
// the registry from here: anonymously (as a node does without forwarded
// credentials), then with the credentials that were forwarded. A registry
// that serves the image here leaves the node's side: not trusted (a plain
// HTTP registry missing from its insecure-registries) or not reachable.
func (c *Client) pullHint(ctx context.Context, image, node, taskErr string, noAuth bool) string {
	host := imageHost(image)
	cause := classifyPull(taskErr)
	status := 0 // the registry's answer to this host
	if cause == causeUnknown {
		ref, err := name.ParseReference(image, name.Insecure)
		if err != nil {
			return ""
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		status = headStatus(hctx, ref, authn.Anonymous)
		if (status == http.StatusUnauthorized || status == http.StatusForbidden) && !noAuth {
			if cr, err := c.lookupCredentials(host); err == nil && cr.has() {
				status = headStatus(hctx, ref, cr.authenticator())
				if status == http.StatusOK {
					cause = causeUntrusted // the credentials work: the node's side
				}
			}
		}
		switch {
		case cause != causeUnknown:
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			cause = causeAuth
		case status == http.StatusNotFound:
			cause = causeMissing
		case status == http.StatusOK:
			cause = causeUntrusted
		case status < 0:
			cause = causeUnreachable
		}
	}
	plain := ""
	if cause == causeUntrusted && plainHTTP(ctx, host) {
		plain = " (it serves plain HTTP)"
	}
	switch cause {
	case causeUntrusted:
		if status == http.StatusOK && namedRegistry(host) {
			// It serves the image here; the name may lead elsewhere there.
			h, _, _ := strings.Cut(host, ":")
			return fmt.Sprintf("registry %s serves it from here, but on %s the name %s may lead elsewhere (zone DNS or its /etc/hosts, e.g. to a zone mirror that is down): labreg doctor says where it leads on each node; or %s does not trust it%s: add %q to insecure-registries in its /etc/docker/daemon.json and restart its dockerd",
				host, node, h, node, plain, host)
		}
		return fmt.Sprintf("registry %s is not trusted by %s%s: add %q to insecure-registries in that node's /etc/docker/daemon.json and restart its dockerd, or check that it reaches %s; labreg doctor checks every node",
			host, node, plain, host, host)
	case causeAuth:
		if noAuth {
			return fmt.Sprintf("registry %s refuses anonymous pulls and no credentials were forwarded to %s (--with-registry-auth=false, or no docker login for it here): run docker login %s here and deploy with --with-registry-auth", host, node, host)
		}
		return fmt.Sprintf("registry %s refused the credentials forwarded to %s: check docker login %s here", host, node, host)
	case causeMissing:
		return fmt.Sprintf("registry %s has no %s: push it (labreg build) or check the tag", host, image)
	case causeUnreachable:
		return fmt.Sprintf("%s cannot reach registry %s: check that %s is the address every node reaches (registry.advertise); labreg doctor checks every node", node, host, host)
	}
	return fmt.Sprintf("check that %s reaches and trusts %s (labreg doctor)", node, host)
}

// headStatus is the registry's HTTP status for a HEAD of ref, or -1 when
// it did not answer.
func headStatus(ctx context.Context, ref name.Reference, auth authn.Authenticator) int {
	_, err := remote.Head(ref, remote.WithContext(ctx), remote.WithAuth(auth))
	if err == nil {
		return http.StatusOK
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return -1
}

// plainHTTP reports whether host answers HTTPS requests with plain HTTP.
func plainHTTP(ctx context.Context, host string) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/v2/", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		return false
	}
	return strings.Contains(err.Error(), "HTTP response to HTTPS client")
}
