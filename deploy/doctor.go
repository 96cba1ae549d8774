package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
)

// Check is one doctor finding.
type Check struct {
	// Name says what was checked.
	Name string
	// OK is true when nothing needs doing.
	OK bool
	// Detail says what was found and, when not OK, what to do.
	Detail string
}

// Diagnosis is what Doctor found, with the fix for every node.
type Diagnosis struct {
	Checks []Check
	// DaemonJSON is the /etc/docker/daemon.json snippet every node needs
	// for a plain-HTTP registry at the advertised address.
	DaemonJSON string
	// Restart is the command that applies it.
	Restart string
	// Nodes are the hostnames that need the snippet.
	Nodes []string
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

// Doctor checks that this engine is a swarm manager, that the registry at
// advertise (HOST:PORT) answers GET /v2/, and that this engine treats it as
// an insecure (plain-HTTP) registry; it returns the daemon.json snippet and
// restart command every node needs.
func (c *Client) Doctor(ctx context.Context, advertise string) (Diagnosis, error) {
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
		sw.Detail = in.Name + " is a swarm worker: run labreg deploy on a manager (docker node promote " + in.Name + ")"
	default:
		sw.Detail = fmt.Sprintf("%s is not in a swarm (%s): docker swarm init --advertise-addr=<this node's IP>", in.Name, in.Swarm.LocalNodeState)
	}
	d.Checks = append(d.Checks, sw)

	reach := Check{Name: "registry reachable"}
	hc := &http.Client{Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+advertise+"/v2/", nil)
	if err != nil {
		return d, fmt.Errorf("registry.advertise %q: %w", advertise, err)
	}
	resp, err := hc.Do(req)
	switch {
	case err != nil:
		reach.Detail = fmt.Sprintf("GET http://%s/v2/: %v (is labreg serve running and --advertise an address every node reaches?)", advertise, err)
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized:
		reach.OK = true
		reach.Detail = fmt.Sprintf("GET http://%s/v2/: %s", advertise, resp.Status)
		if resp.StatusCode == http.StatusUnauthorized {
			reach.Detail += " (basic auth on: deploy with docker login + --with-registry-auth)"
		}
	default:
		reach.Detail = fmt.Sprintf("GET http://%s/v2/: %s (not an OCI registry?)", advertise, resp.Status)
	}
	if resp != nil {
		resp.Body.Close()
	}
	d.Checks = append(d.Checks, reach)

	ins := Check{Name: "insecure registry on this engine"}
	if insecure(in.RegistryConfig, advertise) {
		ins.OK, ins.Detail = true, fmt.Sprintf("this engine pulls from %s over plain HTTP", advertise)
	} else {
		ins.Detail = fmt.Sprintf("this engine would pull from %s over HTTPS and fail: add it to insecure-registries (below)", advertise)
	}
	d.Checks = append(d.Checks, ins)

	snippet, _ := json.MarshalIndent(map[string][]string{"insecure-registries": {advertise}}, "", "  ")
	d.DaemonJSON = string(snippet)
	d.Restart = "sudo systemctl restart docker"
	if nodes, err := c.Nodes(ctx); err == nil {
		for _, n := range nodes {
			d.Nodes = append(d.Nodes, n.Hostname)
		}
	}
	return d, nil
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
