package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/spf13/cobra"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/internal/units"
	"github.com/labreg/labreg/registry/ui"
)

// uiClient is a client of the running server's web UI /api. The address is
// --ui-url when given, else ui.listen of the same configuration `labreg
// serve` reads, on 127.0.0.1 when it listens on every address: ls and gc
// run on the node that serves the registry. (registry.listen/--registry
// name the /v2/ API, which has no catalog data, so they are not used.)
// Credentials are those `docker login` stored for client.registry.
func uiClient(cmd *cobra.Command, c *config.Config, stderr io.Writer) (*ui.Client, error) {
	base, _ := cmd.Flags().GetString("ui-url")
	if base == "" {
		if c.UI.Listen == "" {
			return nil, usageError{fmt.Errorf("ui.listen is empty (no web UI): pass --ui-url of a running labreg UI")}
		}
		host, port, err := net.SplitHostPort(c.UI.Listen)
		if err != nil {
			return nil, usageError{fmt.Errorf("ui.listen %q: %w", c.UI.Listen, err)}
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		scheme := "http"
		if c.Registry.TLSCert != "" {
			scheme = "https"
		}
		base = scheme + "://" + net.JoinHostPort(host, port)
	}
	cl := &ui.Client{BaseURL: base}
	if cf := dockerconfig.LoadDefaultConfigFile(io.Discard); cf != nil {
		if a, err := cf.GetAuthConfig(c.Client.Registry); err == nil && a.Username != "" {
			cl.Username, cl.Password = a.Username, a.Password
		}
	}
	return cl, nil
}

func newLsCmd(io streams) *cobra.Command {
	var (
		filter, sort string
		all          bool
	)
	cmd := &cobra.Command{
		Use:   "ls [REPO]",
		Short: "List repositories, or the tags of one repository, from the running registry's UI",
		Long: `List repositories (name, tags, size, last push) or, with REPO, its tags
(tag, digest, size, created, platforms; tags sharing a digest are listed
together). Reads the /api of the web UI that "labreg serve" runs: by default
on 127.0.0.1 at the port of ui.listen (--ui-listen), or --ui-url.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			cl, err := uiClient(cmd, c, io.Err)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(io.Out, 2, 4, 2, ' ', 0)
			defer tw.Flush()
			ctx := cmd.Context()
			if len(args) == 0 {
				fmt.Fprintln(tw, "REPOSITORY\tTAGS\tSIZE\tLAST PUSH")
				for page := 1; ; page++ {
					p, err := cl.Repositories(ctx, ui.RepoQuery{Filter: filter, Sort: sort, Page: page, Per: 1000, Empty: all})
					if err != nil {
						return err
					}
					for _, r := range p.Items {
						fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", r.Name, r.Tags, units.HumanSize(r.Size), ago(r.LastPush))
					}
					if p.Page >= p.Pages {
						return nil
					}
				}
			}
			fmt.Fprintln(tw, "TAG\tDIGEST\tSIZE\tCREATED\tPLATFORMS")
			for page := 1; ; page++ {
				p, err := cl.Tags(ctx, args[0], ui.TagQuery{Filter: filter, Sort: sort, Page: page, Per: 1000})
				if err != nil {
					return err
				}
				for _, g := range p.Groups {
					for i, t := range g.Tags {
						size, created, plats := "", "", ""
						if g.Summary != nil {
							size, created, plats = units.HumanSize(g.Size), ago(g.Created), strings.Join(g.Platforms, ",")
							if g.ArtifactType != "" {
								plats = g.ArtifactType
							}
						}
						name := t.Name
						if i > 0 {
							name = t.Name + " (=)" // same digest as the line above
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, g.Digest.Encoded()[:12], size, created, plats)
					}
				}
				if p.Page >= p.Pages {
					return nil
				}
			}
		},
	}
	cmd.Flags().StringVar(&filter, "filter", "", "only names containing this")
	cmd.Flags().StringVar(&sort, "sort", "", "repositories: name or push; tags: name (natural) or created")
	cmd.Flags().BoolVar(&all, "all", false, "include repositories without tags")
	cmd.Flags().String("ui-url", "", "URL of the labreg web UI (default http://127.0.0.1:<port of ui.listen>)")
	bindConfig(cmd, "registry.", "ui.", "client.")
	return cmd
}

// ago prints a time as "2026-03-14 09:26 (3 days ago)".
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Minute)
	var rel string
	switch {
	case d < time.Hour:
		rel = fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 48*time.Hour:
		rel = fmt.Sprintf("%d hours ago", int(d.Hours()))
	default:
		rel = fmt.Sprintf("%d days ago", int(d.Hours()/24))
	}
	return t.UTC().Format("2006-01-02 15:04") + " (" + rel + ")"
}
