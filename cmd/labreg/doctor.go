package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newDoctorCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this swarm can deploy from the registry and print what each node needs",
		Long: `Check that this engine is a swarm manager, that registry.advertise answers GET /v2/, and
that this engine trusts it as a plain-HTTP (insecure) registry; print the daemon.json snippet
and restart command every node needs. Exit status 1 when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, dc, err := quietDeployClient(cmd, io)
			if err != nil {
				return err
			}
			defer dc.Close()
			d, err := dc.Doctor(cmd.Context(), c.Registry.Advertise)
			if err != nil {
				return err
			}
			for _, ch := range d.Checks {
				mark := "ok  "
				if !ch.OK {
					mark = "FAIL"
				}
				fmt.Fprintf(io.Out, "%s %s: %s\n", mark, ch.Name, ch.Detail)
			}
			nodes := "every node"
			if len(d.Nodes) > 0 {
				nodes = "every node (" + strings.Join(d.Nodes, ", ") + ")"
			}
			fmt.Fprintf(io.Out, "\nOn %s, merge into /etc/docker/daemon.json:\n%s\nthen: %s\n", nodes, d.DaemonJSON, d.Restart)
			if !d.OK() {
				return errors.New("doctor found problems (see above)")
			}
			return nil
		},
	}
	bindConfig(cmd, "registry.advertise", "log.")
	return cmd
}
