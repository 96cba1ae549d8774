package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newStatusCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [SERVICE]",
		Short: "Show services, their tasks with the digest each runs and its registry tags, and nodes",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, dc, err := quietDeployClient(cmd, io)
			if err != nil {
				return err
			}
			defer dc.Close()
			svc := ""
			if len(args) == 1 {
				svc = args[0]
			}
			st, err := dc.Status(cmd.Context(), svc)
			if err != nil {
				return err
			}
			for _, s := range st.Services {
				fmt.Fprintf(io.Out, "SERVICE %s  %s %d/%d  %s\n", s.Name, s.Mode, s.Running, s.Desired, s.Image)
				if s.UpdateState != "" {
					fmt.Fprintf(io.Out, "  update: %s (%s)\n", s.UpdateState, s.UpdateMessage)
				}
				ds := make([]string, 0, len(s.Digests))
				for d := range s.Digests {
					ds = append(ds, d)
				}
				sort.Strings(ds)
				for _, d := range ds {
					tags := strings.Join(s.Digests[d], ",")
					if tags == "" {
						tags = "(no tag)"
					}
					fmt.Fprintf(io.Out, "  digest %s  tags: %s\n", d, tags)
				}
				if s.TagErr != "" {
					fmt.Fprintf(io.Out, "  tags unknown: %s\n", s.TagErr)
				}
				w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "  TASK\tSLOT/NODE\tSTATE\tDESIRED\tDIGEST\tERROR")
				for _, t := range s.Tasks {
					where := t.Node
					if t.Slot > 0 {
						where = fmt.Sprintf("%d %s", t.Slot, t.Node)
					}
					d := t.Digest
					if len(d) > 19 {
						d = d[:19]
					}
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", short(t.ID), where, t.State, t.DesiredState, d, t.Err)
				}
				if err := w.Flush(); err != nil {
					return err
				}
			}
			w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tROLE\tSTATE\tAVAILABILITY\tADDR\tLABELS")
			for _, n := range st.Nodes {
				role := n.Role
				if n.Leader {
					role += " (leader)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Hostname, role, n.State, n.Availability, n.Addr, labelString(n.Labels))
			}
			return w.Flush()
		},
	}
	// No client.registry: status asks the registry each service's image
	// names for its tags (--registry's "to push to" did not apply).
	bindConfig(cmd, "registry.advertise", "log.")
	return cmd
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func labelString(l map[string]string) string {
	ks := make([]string, 0, len(l))
	for k, v := range l {
		ks = append(ks, k+"="+v)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}
