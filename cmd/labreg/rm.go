package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newRmCmd(io streams) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "rm SERVICE...",
		Short: "Remove swarm services by exact name",
		Long: `Remove swarm services, each named exactly (or by its full ID): unlike docker service rm,
an ID prefix never matches. When one name matches no service nothing is removed and the
error lists services with a similar name or ID. Networks, secrets and configs stay
(labreg down -f FILE removes those a compose file created).`,
		Example: `  labreg rm myhttpd
  labreg rm --dry-run web samsung`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, dc, err := quietDeployClient(cmd, io)
			if err != nil {
				return err
			}
			defer dc.Close()
			removed, err := dc.Remove(cmd.Context(), args, dryRun)
			for _, r := range removed {
				if dryRun {
					fmt.Fprintf(io.Out, "would remove service %s (%s)\n", r.Name, r.ID)
				} else {
					fmt.Fprintf(io.Out, "removed service %s (%s)\n", r.Name, r.ID)
				}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be removed, remove nothing")
	bindConfig(cmd, "log.")
	return cmd
}
