package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newNodeCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "List swarm nodes and manage their labels"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List swarm nodes with their labels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, dc, err := quietDeployClient(cmd, io)
			if err != nil {
				return err
			}
			defer dc.Close()
			nodes, err := dc.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tHOSTNAME\tROLE\tSTATE\tAVAILABILITY\tENGINE\tLABELS")
			for _, n := range nodes {
				role := n.Role
				if n.Leader {
					role += " (leader)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", short(n.ID), n.Hostname, role, n.State, n.Availability, n.Engine, labelString(n.Labels))
			}
			return w.Flush()
		},
	}
	var rm []string
	label := &cobra.Command{
		Use:   "label NODE [KEY=VALUE...] [--rm KEY]",
		Short: "Add or remove node labels (docker node update --label-add/--label-rm)",
		Example: `  labreg node label worker1 zone=seoul srv=web
  labreg node label worker1 --rm srv`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set := map[string]string{}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("label %q: want KEY=VALUE", kv)}
				}
				set[k] = v
			}
			if len(set) == 0 && len(rm) == 0 {
				return usageError{errors.New("nothing to do: give KEY=VALUE labels or --rm KEY")}
			}
			_, dc, err := quietDeployClient(cmd, io)
			if err != nil {
				return err
			}
			defer dc.Close()
			n, err := dc.LabelNode(cmd.Context(), args[0], set, rm)
			if err != nil {
				return err
			}
			fmt.Fprintf(io.Out, "%s\t%s\n", n.Hostname, labelString(n.Labels))
			return nil
		},
	}
	label.Flags().StringArrayVar(&rm, "rm", nil, "remove this label key")
	bindConfig(ls, "log.")
	bindConfig(label, "log.")
	cmd.AddCommand(ls, label)
	return cmd
}
