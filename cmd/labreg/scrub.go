package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

func newScrubCmd(io streams) *cobra.Command {
	var (
		opts    registry.ScrubOptions
		offline bool
	)
	cmd := &cobra.Command{
		Use:   "scrub",
		Short: "Verify the registry's storage (blobs, manifests, tags, leftovers); --repair fixes what it safely can",
		Long: `Verify what the registry stores: every blob against its digest, every
manifest's references (config, layers, index children), every tag's link;
and list stray temporary files and uploads abandoned for --upload-purge-age.

--repair fixes what can be fixed without losing acknowledged data: a corrupt
blob is moved to <data>/quarantine/ (kept, no longer served, so that pushing
the image again stores it anew), a tag whose manifest is gone is removed,
stray temporary files and abandoned uploads are removed. A manifest that
references a missing blob is reported: push that image again.

Like gc, scrub asks the running server through its UI's /api (repair makes
the registry read-only meanwhile); when that address refuses the connection
it works on the data dir (--data) directly, where --repair refuses while a
server uses the data dir. Exit status 1 when problems are left unrepaired.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			opts.UploadAge = c.Registry.UploadPurgeAge
			ctx := cmd.Context()
			var rep *registry.ScrubReport
			if !offline {
				cl, err := uiClient(cmd, c, io.Err)
				if err != nil {
					return err
				}
				rep, err = cl.Scrub(ctx, opts)
				if errors.Is(err, ui.ErrUnreachable) {
					fmt.Fprintf(io.Err, "labreg: no server answers at %s; scrubbing %s directly\n", cl.BaseURL, c.Registry.Data)
					offline = true
				} else if err != nil {
					return err
				}
			}
			if offline {
				if rep, err = registry.OfflineScrub(ctx, registryOptions(c, newLogger(c, io.Err)), opts); err != nil {
					return err
				}
			}
			if len(rep.Problems) > 0 {
				tw := tabwriter.NewWriter(io.Out, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PROBLEM\tWHERE\tDETAIL\tREPAIR")
				for _, p := range rep.Problems {
					where := p.Repo
					if p.Tag != "" {
						where += ":" + p.Tag
					}
					if p.Digest != "" {
						where += " " + string(p.Digest)
					}
					if p.Path != "" {
						where += " " + p.Path
					}
					action := p.Action
					if p.Repaired {
						action = "done: " + action
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Kind, where, p.Detail, action)
				}
				tw.Flush()
			}
			left := rep.Unrepaired()
			fmt.Fprintf(io.Out, "checked %d blobs, %d manifests, %d tags, %d uploads: %d problems, %d repaired\n",
				rep.Blobs, rep.Manifests, rep.Tags, rep.Uploads, len(rep.Problems), len(rep.Problems)-left)
			if left > 0 {
				if !opts.Repair {
					return fmt.Errorf("%d problems found (--repair fixes what it can)", left)
				}
				return fmt.Errorf("%d problems left that repair cannot fix (see above)", left)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&opts.Repair, "repair", false, "fix what can be fixed without losing acknowledged data")
	cmd.Flags().BoolVar(&offline, "offline", false, "work on the data dir directly (--repair refuses while a server uses it)")
	cmd.Flags().String("ui-url", "", "URL of the labreg web UI (default http://127.0.0.1:<port of ui.listen>)")
	bindConfig(cmd, "registry.", "ui.", "client.")
	return cmd
}
