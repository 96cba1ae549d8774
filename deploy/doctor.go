package deploy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
)

// Check is one doctor finding.
type Check struct {
	// Name says what was checked, e.g. "registry reachable", "node worker1".
	Name string
	// Node is the hostname of the node the check is about, if any.
	Node string
	// OK is true when nothing needs doing.
	OK bool
	// Detail says what was found.
	Detail string
	// Fix is what to do, when not OK: the exact commands, for Node when set.
	Fix string
}

// Diagnosis is what Doctor found.
type Diagnosis struct {
	Checks []Check
}

// OK reports whether every check passed.
func (d Diagnosis) OK() bool {
	for _, c := range d.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

// DoctorOptions tunes Doctor. The zero value checks a plain-HTTP registry
// on every node.
type DoctorOptions struct {
	// TLS says the registry serves HTTPS (registry.tls_cert is set): it is
	// probed over https:// and nodes must trust its certificate, not list
	// it as an insecure registry. Default: plain HTTP.
	TLS bool
	// LocalOnly checks this engine only, without the probe job on every
	// node. Default false.
	LocalOnly bool
	// Timeout bounds the probe job on the nodes. Default 1m.
	Timeout time.Duration
}

// Doctor checks that this engine is a swarm manager advertised on an
// address its workers reach, that the registry at advertise (HOST:PORT)
// answers GET /v2/ from here, that this engine trusts it, and (unless
// LocalOnly) that every ready node can pull from it: it pushes a small
// probe image there and runs a global job of it, like Prepull. Every
// failed check carries the exact fix, per node.
func (c *Client) Doctor(ctx context.Context, advertise string, opts DoctorOptions) (Diagnosis, error) {
	var d Diagnosis
	info, err := c.api.Info(ctx, client.InfoOptions{})
	if err != nil {
		return d, fmt.Errorf("asking the Docker Engine at %s for its info: %w", c.api.DaemonHost(), err)
	}
	in := info.Info
	sw := Check{Name: "swarm manager"}
	switch {
	case in.Swarm.ControlAvailable:
		sw.OK, sw.Detail = true, fmt.Sprintf("%s is a manager of a %d-node swarm (%s)", in.Name, in.Swarm.Nodes, in.Swarm.NodeAddr)
	case in.Swarm.LocalNodeState == "active":
		sw.Detail = in.Name + " is a swarm worker"
		sw.Fix = "run labreg on a manager, or on a manager: docker node promote " + in.Name
	default:
		sw.Detail = fmt.Sprintf("%s is not in a swarm (%s)", in.Name, in.Swarm.LocalNodeState)
		sw.Fix = "docker swarm init --advertise-addr=<this node's address that the workers reach>"
	}
	d.Checks = append(d.Checks, sw)
	if sw.OK {
		d.Checks = append(d.Checks, swarmAddrCheck(in.Swarm.NodeAddr, in.Swarm.Nodes))
	}

	scheme := "http"
	if opts.TLS {
		scheme = "https"
	}
	reach := Check{Name: "registry reachable"}
	// The probe only asks whether something answers; whether the nodes
	// trust the certificate is the node checks' business.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // reachability only, no data
	}}
	url := scheme + "://" + advertise + "/v2/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return d, fmt.Errorf("registry.advertise %q: %w", advertise, err)
	}
	resp, err := hc.Do(req)
	authOn := false
	switch {
	case err != nil:
		reach.Detail = fmt.Sprintf("GET %s: %v", url, err)
		reach.Fix = "start labreg serve, and advertise an address every node reaches (labreg serve --advertise HOST:PORT, or registry.advertise in /etc/labreg/config.yaml)"
		if !opts.TLS && strings.Contains(err.Error(), "malformed HTTP response") {
			reach.Fix = "the registry speaks HTTPS: set registry.tls_cert (labreg doctor then checks it as a TLS registry)"
		}
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized:
		reach.OK = true
		reach.Detail = fmt.Sprintf("GET %s: %s", url, resp.Status)
		if resp.StatusCode == http.StatusUnauthorized {
			authOn = true
			reach.Detail += " (basic auth on: nodes pull with the credentials labreg deploy forwards from this machine's docker login)"
		}
	default:
		reach.Detail = fmt.Sprintf("GET %s: %s (not an OCI registry?)", url, resp.Status)
		reach.Fix = "registry.advertise must name labreg serve's registry port (default 5000), not the web UI's"
	}
	if resp != nil {
		resp.Body.Close()
	}
	if opts.TLS && err != nil && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		reach.Fix = "the registry speaks plain HTTP: drop registry.tls_cert/tls_key here, or serve with --tls-cert and --tls-key"
	}
	d.Checks = append(d.Checks, reach)

	local := Check{Name: "this engine trusts the registry", Node: in.Name}
	switch {
	case opts.TLS:
		// An engine verifies a TLS registry's certificate against the system
		// roots and /etc/docker/certs.d/HOST:PORT/ca.crt: the probe tells.
		local.OK, local.Detail = true, fmt.Sprintf("%s serves HTTPS: no insecure-registries entry needed (the node probe checks the certificate is trusted)", advertise)
	case insecure(in.RegistryConfig, advertise):
		local.OK, local.Detail = true, fmt.Sprintf("this engine pulls from %s over plain HTTP", advertise)
	default:
		local.Detail = fmt.Sprintf("this engine would pull from %s over HTTPS and fail (\"server gave HTTP response to HTTPS client\")", advertise)
		local.Fix = insecureFix(in.Name, advertise)
	}
	d.Checks = append(d.Checks, local)

	if opts.LocalOnly || !sw.OK {
		return d, nil
	}
	if !reach.OK {
		d.Checks = append(d.Checks, Check{Name: "nodes", Detail: "not probed: the registry does not answer from here",
			Fix: "fix registry reachable first"})
		return d, nil
	}
	nodes, err := c.probeNodes(ctx, advertise, opts, authOn)
	if err != nil {
		d.Checks = append(d.Checks, Check{Name: "nodes", Detail: "not probed: " + err.Error(),
			Fix: "labreg doctor pushes a small image labreg-doctor:probe to the registry; make it writable from here (docker login " + advertise + ")"})
		return d, nil
	}
	d.Checks = append(d.Checks, nodes...)
	return d, nil
}

// swarmAddrCheck flags a swarm advertised on a loopback address: a worker
// joins through whatever address it is given, but after a restart it
// dials the advertised one (127.0.0.1:2377, itself) forever.
func swarmAddrCheck(nodeAddr string, nodes int) Check {
	ch := Check{Name: "swarm address", OK: true, Detail: "the swarm is advertised on " + nodeAddr}
	a, err := netip.ParseAddr(nodeAddr)
	if err != nil || !a.IsLoopback() {
		return ch
	}
	const fix = "re-create the swarm on an address the workers reach: on each worker `docker swarm leave`; here " +
		"`docker swarm leave --force && docker swarm init --advertise-addr=<this node's address>`; then join the workers with the new token (docker swarm join-token worker)"
	if nodes <= 1 {
		ch.Detail += " (loopback): fine alone, but a worker that joins will lose the swarm when its docker restarts; " + fix
		return ch
	}
	ch.OK = false
	ch.Detail += fmt.Sprintf(" (loopback) with %d other node(s): a worker whose docker restarts dials %s:2377, itself, and never rejoins", nodes-1, nodeAddr)
	ch.Fix = fix
	return ch
}

// insecureFix is the daemon.json change and restart that make node trust a
// plain-HTTP registry at advertise.
func insecureFix(node, advertise string) string {
	snippet, _ := json.Marshal(map[string][]string{"insecure-registries": {advertise}})
	return fmt.Sprintf("on %s: add %q to \"insecure-registries\" in /etc/docker/daemon.json (e.g. %s), then `sudo systemctl restart docker`",
		node, advertise, snippet)
}

// insecure reports whether the engine's registry config lets it use host
// over plain HTTP: listed in insecure-registries, or its IP in an insecure
// CIDR (the engine always adds 127.0.0.0/8).
func insecure(rc *registry.ServiceConfig, hostPort string) bool {
	if rc == nil {
		return false
	}
	if ic, ok := rc.IndexConfigs[hostPort]; ok && ic != nil {
		return !ic.Secure
	}
	h, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		h = hostPort
	}
	ips := []netip.Addr{}
	if a, err := netip.ParseAddr(h); err == nil {
		ips = append(ips, a)
	} else if addrs, err := net.LookupHost(h); err == nil {
		for _, s := range addrs {
			if a, err := netip.ParseAddr(s); err == nil {
				ips = append(ips, a)
			}
		}
	}
	for _, a := range ips {
		for _, p := range rc.InsecureRegistryCIDRs {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
	}
	return false
}
