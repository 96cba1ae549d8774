package main

import (
	"context"
	"log/slog"
	"net"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

// newWebUI wires the catalog UI to the registry server in-process.
func newWebUI(srv *registry.Server, advertise string, readOnly bool, hosts []string, data string, st []ui.Setting, log *slog.Logger) (*ui.UI, error) {
	opts := ui.Options{
		Catalog:       srv.Catalog(),
		History:       srv.Events(),
		GC:            srv,
		ReadOnlyState: srv.ReadOnlyState,
		Advertise:     advertise,
		MirrorOf:      srv.Origin(), // "": not a mirror
		ReadOnly:      readOnly,
		Auth:          srv.Authenticator(), // nil: auth off
		Hosts:         hosts,
		Version:       versionString(),
		DataDir:       data,
		Settings:      st,
		Logger:        log,
	}
	// The swarm the registry serves, through the local engine (DOCKER_HOST).
	if dc, err := deploy.New(deploy.Options{Registry: advertise, Logger: log}); err != nil {
		opts.InUse = func(context.Context) (map[digest.Digest]string, error) { return nil, err }
	} else {
		opts.InUse = func(ctx context.Context) (map[digest.Digest]string, error) { return swarmInUse(ctx, dc) }
		opts.Swarm = &uiSwarm{dc: dc, registry: advertise, log: log}
	}
	if srv.CanScrub() { // a filesystem store; an object store checks itself
		opts.Scrub = srv
	}
	// The referrers API of the registry, when this build has it.
	if r, ok := any(srv).(ui.Referrers); ok {
		opts.Referrers = r
	}
	return ui.New(opts)
}

// uiHosts are the host names the web UI answers to: ui.hosts, else the
// hosts of ui.listen and registry.advertise (the UI adds localhost and
// accepts IP addresses).
func uiHosts(c *config.Config) []string {
	var hosts []string
	if c.UI.Hosts != "" {
		for _, h := range strings.Split(c.UI.Hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hosts = append(hosts, h)
			}
		}
		return hosts
	}
	for _, hp := range []string{c.UI.Listen, c.Registry.Advertise} {
		if h, _, err := net.SplitHostPort(hp); err == nil && h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// settings lists the effective configuration for the status page (the UI
// redacts secrets).
func settings(c *config.Config) []ui.Setting {
	var out []ui.Setting
	for _, f := range c.Fields() {
		out = append(out, ui.Setting{Key: f.Key, Value: f.String()})
	}
	return out
}
