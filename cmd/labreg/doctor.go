package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/deploy"
)

func newDoctorCmd(io streams) *cobra.Command {
	var (
		local   bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that every node of this swarm can pull from the registry, and print the fix for each that cannot",
		Long: `Check that this engine is a swarm manager advertised on an address its workers reach (not
loopback), that registry.advertise answers GET /v2/ from here, that this engine trusts it, and
that every ready node can pull from it: doctor pushes a small image (labreg-doctor:probe) to the
registry and runs it as a global job, like deploy --prepull. A failed check is followed by its
exact fix for that node (the daemon.json insecure-registries entry and restart for a plain-HTTP
registry, the CA certificate for a TLS one). When registry.advertise names its host (registry.lab:5000,
not an IP) the name may lead elsewhere on each node (zone mirrors): the probe job then runs this
labreg itself on each node, in the node's network, and each node's line says the address the name
resolves to there and that it serves the probe's pinned digest (this needs a static labreg,
CGO_ENABLED=0, as make build and labreg's own image build it). The first line says which address is checked and
where it came from (flag, LABREG_ADVERTISE, config file, the running labreg serve, or derived).
Exit status 1 when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, o, err := loadConfigOrigins(cmd)
			if err != nil {
				return err
			}
			dc, err := newDeployClient(c, io, "quiet")
			if err != nil {
				return err
			}
			defer dc.Close()
			fmt.Fprintf(io.Out, "registry.advertise %s (from: %s)\n", c.Registry.Advertise, o.Of("registry.advertise"))
			d, err := dc.Doctor(cmd.Context(), c.Registry.Advertise, deploy.DoctorOptions{
				TLS: c.Registry.TLSCert != "", LocalOnly: local, Timeout: timeout})
			if err != nil {
				return err
			}
			for _, ch := range d.Checks {
				mark := "ok  "
				if !ch.OK {
					mark = "FAIL"
				}
				fmt.Fprintf(io.Out, "%s %s: %s\n", mark, ch.Name, ch.Detail)
				if !ch.OK && ch.Fix != "" {
					fmt.Fprintf(io.Out, "     fix: %s\n", ch.Fix)
				}
			}
			if !d.OK() {
				return errors.New("doctor found problems (see above)")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "check this engine only (no probe job on the nodes)")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long the nodes get to pull the probe image")
	bindConfig(cmd, "registry.advertise", "registry.tls_", "log.")
	cmd.AddCommand(newNodeProbeCmd(io))
	return cmd
}

// newNodeProbeCmd is what doctor's probe job runs on each node for a
// registry named by a host name (deploy.NodeProbeCommand): where the name
// leads there and whether that serves the probe's pinned digest, one line
// on stdout; exit status 1 when it does not.
func newNodeProbeCmd(io streams) *cobra.Command {
	var tlsOn bool
	cmd := &cobra.Command{
		Use:    "node-probe HOST:PORT REPO@DIGEST",
		Short:  "Say where HOST resolves on this node and whether it serves REPO@DIGEST (run by doctor's probe job)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			line, ok := deploy.NodeProbe(cmd.Context(), args[0], args[1], tlsOn)
			fmt.Fprintln(io.Out, line)
			if !ok {
				return errors.New("the registry name does not lead to the pinned digest here")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&tlsOn, "tls", false, "the registry serves HTTPS")
	return cmd
}
