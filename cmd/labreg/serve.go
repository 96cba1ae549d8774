package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

func newServeCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the private registry (and its web UI) on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, o, err := loadConfigOrigins(cmd)
			if err != nil {
				return err
			}
			log := newLogger(c, io.Err)
			registry.RouteLogrus(log) // distribution's own log lines, once per process
			ctx := cmd.Context()
			srv, err := registry.New(ctx, registryOptions(c, log))
			if err != nil {
				return err
			}
			addr, err := srv.Listen(c.Registry.Listen)
			if err != nil {
				return err
			}
			scheme := "http"
			if c.Registry.TLSCert != "" {
				scheme = "https"
			}
			var (
				web  *ui.UI
				uiLn net.Listener
			)
			where := "no web UI"
			if c.UI.Listen != "" {
				if web, err = newWebUI(srv, c.Registry.Advertise, c.UI.ReadOnly || c.Registry.ReadOnly, uiHosts(c), c.Registry.Data, settings(c), log); err != nil {
					return err
				}
				if uiLn, err = net.Listen("tcp", c.UI.Listen); err != nil {
					return fmt.Errorf("web UI cannot listen on %s: %w", c.UI.Listen, err)
				}
				where = fmt.Sprintf("web UI on %s://%s", scheme, displayAddr(uiLn.Addr()))
			}
			// The client commands on this host take the advertised address
			// from here when it is set nowhere else (config.LoadOrigins).
			statePath := config.StateFile(nil)
			unrecord, err := config.WriteServerState(statePath, config.ServerState{PID: os.Getpid(),
				Advertise: c.Registry.Advertise, Listen: displayAddr(addr), TLS: c.Registry.TLSCert != "",
				TLSCert: c.Registry.TLSCert, TLSKey: c.Registry.TLSKey})
			if err != nil {
				log.Warn("client commands on this host will not find the advertised address", "err", err)
			}
			defer unrecord()
			data := c.Registry.Data
			if c.Registry.Storage != "" && c.Registry.Storage != "filesystem" {
				data = c.Registry.Storage + ", local state in " + data
			}
			fmt.Fprintf(io.Out, "labreg: registry on %s://%s (advertised as %s), %s, data in %s\n",
				scheme, displayAddr(addr), c.Registry.Advertise, where, data)
			log.Info("advertised address", "advertise", c.Registry.Advertise, "from", o.Of("registry.advertise"), "recorded", statePath)
			if web == nil {
				return srv.Serve(ctx)
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() { // the first page view after a restart finds the index built
				if err := srv.Catalog().Warm(ctx); err != nil && ctx.Err() == nil {
					log.Warn("building the catalog index", "err", err)
				}
			}()
			uiErr := make(chan error, 1)
			go func() {
				err := web.Serve(ctx, uiLn, c.Registry.TLSCert, c.Registry.TLSKey)
				if err != nil {
					err = fmt.Errorf("web UI: %w", err)
				}
				uiErr <- err
				cancel() // the registry stops with its UI
			}()
			err = srv.Serve(ctx)
			cancel()
			if e := <-uiErr; err == nil {
				err = e
			}
			return err
		},
	}
	bindConfig(cmd, "registry.", "ui.", "log.")
	return cmd
}

// displayAddr shows a wildcard listener as the port on every address.
func displayAddr(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok && t.IP.IsUnspecified() {
		return fmt.Sprintf("0.0.0.0:%d", t.Port)
	}
	return a.String()
}

// registryOptions are the registry's Options from the config c, for the
// server and for the offline tools (gc, scrub) alike: they find the same
// data dir, storage and Redis cache.
func registryOptions(c *config.Config, log *slog.Logger) registry.Options {
	return registry.Options{
		DataDir:              c.Registry.Data,
		TLSCert:              c.Registry.TLSCert,
		TLSKey:               c.Registry.TLSKey,
		Htpasswd:             c.Registry.Htpasswd,
		Realm:                c.Registry.Realm,
		AuthLimit:            registry.AuthLimit{Burst: c.Registry.AuthFailBurst, Interval: c.Registry.AuthFailInterval},
		ReadOnly:             c.Registry.ReadOnly,
		ProxyRemoteURL:       c.Registry.ProxyRemoteURL,
		ProxyCredentialsFile: c.Registry.ProxyCredentialsFile,
		DrainTimeout:         c.Registry.DrainTimeout,
		GCDrainTimeout:       c.Registry.GCDrainTimeout,
		ReadHeaderTimeout:    c.Registry.ReadHeaderTimeout,
		IdleTimeout:          c.Registry.IdleTimeout,
		BodyTimeout:          c.Registry.BodyTimeout,
		MaxUploads:           c.Registry.MaxUploads,
		UploadMemory:         c.Registry.UploadMemory,
		MinFreePercent:       c.Registry.MinFreePercent,
		UploadPurgeAge:       c.Registry.UploadPurgeAge,
		EventsKeep:           c.Registry.EventsKeep,
		EventsCompactSize:    c.Registry.EventsCompactSize,
		Logger:               log,

		Storage:         c.Registry.Storage,
		S3AccessKeyFile: c.Registry.S3AccessKeyFile,
		S3SecretKeyFile: c.Registry.S3SecretKeyFile,
		HTTPSecretFile:  c.Registry.HTTPSecretFile,
		Redis:           c.Registry.Redis,
	}
}
