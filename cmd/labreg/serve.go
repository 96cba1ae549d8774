package main

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/registry"
)

func newServeCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the private registry (and its web UI) on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			log := newLogger(c, io.Err)
			ctx := cmd.Context()
			srv, err := registry.New(ctx, registry.Options{
				DataDir:        c.Registry.Data,
				TLSCert:        c.Registry.TLSCert,
				TLSKey:         c.Registry.TLSKey,
				Htpasswd:       c.Registry.Htpasswd,
				Realm:          c.Registry.Realm,
				ReadOnly:       c.Registry.ReadOnly,
				ProxyRemoteURL: c.Registry.ProxyRemoteURL,
				DrainTimeout:   c.Registry.DrainTimeout,
				Logger:         log,
			})
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
			fmt.Fprintf(io.Out, "labreg: registry on %s://%s (advertised as %s), data in %s\n",
				scheme, displayAddr(addr), c.Registry.Advertise, c.Registry.Data)
			return srv.Serve(ctx)
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
