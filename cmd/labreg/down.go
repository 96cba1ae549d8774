package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/deploy"
)

func newDownCmd(io streams) *cobra.Command {
	var (
		file    string
		dryRun  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "down -f FILE",
		Short: "Remove the services of a compose file and the networks, secrets and configs labreg created for them",
		Long: `Remove what "labreg deploy -f FILE" created: the services labelled
` + deploy.StackLabel + `=STACK (STACK is the file's name without .yaml, e.g. quiz-b), then the
networks, secrets and configs labreg created for them with the same label, once no other service
uses them. Nothing without the label is touched: a network or secret that existed before the
deploy, or a service of the same name deployed with flags, stays. --dry-run lists what would go.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageError{fmt.Errorf("down needs -f FILE (the compose file that was deployed)")}
			}
			specs, err := deploy.LoadFile(cmd.Context(), file)
			if err != nil {
				return usageError{err}
			}
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			progress := progressAuto // what was removed, as it goes, on a terminal
			if dryRun {
				progress = progressQuiet
			}
			dc, err := newDeployClient(c, io, progress)
			if err != nil {
				return err
			}
			defer dc.Close()
			names := make([]string, 0, len(specs))
			for _, s := range specs {
				names = append(names, s.Name)
			}
			stack := deploy.StackName(file)
			res, err := dc.Down(cmd.Context(), stack, deploy.DownOptions{DryRun: dryRun, Services: names, Timeout: timeout})
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			for _, o := range res.Removed {
				fmt.Fprintf(io.Out, "%s\t%s\t%s\n", verb, o.Kind, o.Name)
			}
			for _, o := range res.Kept {
				fmt.Fprintf(io.Out, "kept\t%s\t%s\t(%s)\n", o.Kind, o.Name, o.Reason)
			}
			if err != nil {
				return err
			}
			if len(res.Removed) == 0 {
				fmt.Fprintf(io.Err, "labreg: nothing of stack %s (%s) to remove\n", stack, file)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "the compose file that was deployed (its name is the stack)")
	f.BoolVar(&dryRun, "dry-run", false, "list what would be removed and kept; remove nothing")
	f.DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the services' tasks to leave their networks")
	bindConfig(cmd, "log.")
	return cmd
}
