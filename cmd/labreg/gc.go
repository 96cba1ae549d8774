package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/internal/units"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

func newGCCmd(io streams) *cobra.Command {
	var (
		opts    registry.GCOptions
		offline bool
		verbose bool
		ignore  bool
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove blobs no manifest references (online: the registry is read-only meanwhile)",
		Long: `Garbage-collect the registry's storage.

When "labreg serve" runs, gc asks it through its web UI's /api (see "labreg ls
--help" for the address): the registry turns read-only for the duration —
pushes get 503 with Retry-After and docker retries — and back.
When nothing listens there (the connection is refused; any other failure,
such as TLS, is an error) and no server has the data dir open, gc works on
the data dir (--data) directly,
after taking the data dir's lock (a server holds it while it writes, so this never
runs beside a write in flight, and the server refuses pushes with 503 until it
ends). --offline forces that.

Nothing a manifest references is removed: layers, configs, index children,
and referrers (signatures, SBOMs).

With --remove-untagged, gc first asks the swarm (the Docker Engine at
DOCKER_HOST, a manager) which images its services use — current spec,
previous spec (the rollback target), running tasks — and keeps those
manifests although no tag reaches them ("kept: used by service X" in the
dry run and with -v). When the engine cannot be asked, a dry run says so
and a real run refuses: a service pinned to a removed digest can no longer
roll back or reschedule a task. --ignore-swarm removes them unchecked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var res *registry.GCResult
			if !offline {
				cl, err := uiClient(cmd, c, io.Err)
				if err != nil {
					return err
				}
				res, err = cl.GC(ctx, ui.GCRequest{DryRun: opts.DryRun, RemoveUntagged: opts.RemoveUntagged, RemoveEmptyRepos: opts.RemoveEmptyRepos, IgnoreSwarm: ignore})
				if errors.Is(err, ui.ErrUnreachable) {
					// Only a refused connection means no server, and even
					// then one may run on the data dir without a UI here.
					if registry.ServerRunning(c.Registry.Data) {
						return fmt.Errorf("%w; but a labreg server is running on %s: run gc through its UI (--ui-url), or pass --offline to collect beside it", err, c.Registry.Data)
					}
					fmt.Fprintf(io.Err, "labreg: no server answers at %s; collecting offline in %s\n", cl.BaseURL, c.Registry.Data)
					offline = true
				} else if err != nil {
					return err
				}
			}
			if offline && c.Registry.Storage != "" && c.Registry.Storage != "filesystem" {
				return fmt.Errorf("offline GC works on filesystem storage only (registry.storage is %s)", c.Registry.Storage)
			}
			if offline {
				unchecked, err := offlineKeep(ctx, c, io, &opts, ignore)
				if err != nil {
					return err
				}
				log := newLogger(c, io.Err)
				registry.RouteLogrus(log) // the vacuum logs every deletion through logrus
				if res, err = registry.OfflineGC(ctx, registryOptions(c, log), opts); err != nil {
					return err
				}
				res.Unchecked = unchecked
			}
			if res.Unchecked != "" {
				fmt.Fprintf(io.Err, "labreg: %s; untagged manifests a service uses may be listed as removable\n", res.Unchecked)
			}
			verb := "removed"
			if res.DryRun {
				verb = "would remove"
			}
			if verbose || res.DryRun {
				tw := tabwriter.NewWriter(io.Out, 2, 4, 2, ' ', 0)
				for _, r := range res.Repositories {
					fmt.Fprintf(tw, "repository\t%s\t\n", r)
				}
				for _, m := range res.Manifests {
					fmt.Fprintf(tw, "manifest\t%s@%s\t\n", m.Repo, m.Digest)
				}
				for _, m := range res.InUse {
					fmt.Fprintf(tw, "kept\t%s@%s\t%s\n", m.Repo, m.Digest, m.Reason)
				}
				for _, b := range res.Blobs {
					fmt.Fprintf(tw, "blob\t%s\t%s\n", b.Digest, units.HumanSize(b.Size))
				}
				tw.Flush()
			}
			inUse := ""
			if len(res.InUse) > 0 {
				inUse = fmt.Sprintf(" (%d untagged manifests kept: used by swarm services)", len(res.InUse))
			}
			fmt.Fprintf(io.Out, "%s %d blobs (%s, %d bytes), %d untagged manifests, %d empty repositories; %d still referenced%s\n",
				verb, len(res.Blobs), units.HumanSize(res.Bytes), res.Bytes, len(res.Manifests), len(res.Repositories), res.Kept, inUse)
			return nil
		},
	}
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "show what would be removed and how many bytes, remove nothing")
	cmd.Flags().BoolVar(&opts.RemoveUntagged, "remove-untagged", false, "also remove manifests no tag reaches (directly, as index child or as referrer)")
	cmd.Flags().BoolVar(&opts.RemoveEmptyRepos, "remove-empty-repos", false, "also remove repositories left without tags or manifests")
	cmd.Flags().BoolVar(&ignore, "ignore-swarm", false, "with --remove-untagged: remove untagged manifests even when the swarm cannot be asked which images its services use")
	cmd.Flags().BoolVar(&offline, "offline", false, "work on the data dir directly (fails while a server uses it)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every removed blob and manifest")
	cmd.Flags().String("ui-url", "", "URL of the labreg web UI (default http://127.0.0.1:<port of ui.listen>)")
	bindConfig(cmd, "registry.", "ui.", "client.")
	return cmd
}
