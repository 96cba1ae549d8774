package main

import (
	"log/slog"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

// newWebUI wires the catalog UI to the registry server in-process.
func newWebUI(srv *registry.Server, advertise string, readOnly bool, htpasswd, realm, data string, st []ui.Setting, log *slog.Logger) (*ui.UI, error) {
	opts := ui.Options{
		Catalog:       srv.Catalog(),
		History:       srv.Events(),
		GC:            srv,
		Scrub:         srv,
		ReadOnlyState: srv.ReadOnlyState,
		Advertise:     advertise,
		ReadOnly:      readOnly,
		Htpasswd:      htpasswd,
		Realm:         realm,
		Version:       versionString(),
		DataDir:       data,
		Settings:      st,
		Logger:        log,
	}
	// The referrers API of the registry, when this build has it.
	if r, ok := any(srv).(ui.Referrers); ok {
		opts.Referrers = r
	}
	return ui.New(opts)
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
