package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labreg/labreg/config"
)

func newConfigCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print the effective configuration and where each value came from",
		Long: `Print the effective configuration: built-in defaults, then the config file (--config,
$LABREG_CONFIG, else the first of ~/.config/labreg/config.yaml and /etc/labreg/config.yaml),
then LABREG_* variables, then flags. A client command whose registry.advertise is set nowhere
takes it from the labreg serve running on this host. Each line ends with where its value came
from.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, o, err := loadConfigOrigins(cmd)
			if err != nil {
				return err
			}
			_, err = io.Out.Write(c.Annotated(o))
			return err
		},
	}
	bindConfig(cmd, "")
	return cmd
}

// loadConfigOrigins builds the effective config from defaults, file, env
// and the flags the user set on cmd, and says where each value came from.
// Only `labreg serve` ignores a running server's advertised address.
func loadConfigOrigins(cmd *cobra.Command) (*config.Config, config.Origins, error) {
	file, _ := cmd.Root().PersistentFlags().GetString(configFlag)
	set := map[string]string{}
	known := map[string]bool{}
	for _, f := range config.Default().Fields() {
		known[f.Flag] = true
	}
	cmd.Flags().Visit(func(fl *pflagFlag) {
		if known[fl.Name] {
			set[fl.Name] = fl.Value.String()
		}
	})
	serve := cmd.Name() == "serve"
	c, o, err := config.LoadOrigins(config.Sources{File: file, Flags: set, Server: serve})
	if err != nil {
		return nil, nil, usageError{err}
	}
	// Where it matters: a command that pulls or pushes through an address
	// guessed from this host's interfaces says so (on a terminal; config
	// and doctor print the origin themselves).
	if from := o.Of("registry.advertise"); !serve && strings.HasPrefix(from, "derived") && o.Of("client.registry") == "registry.advertise" &&
		cmd.Flags().Lookup("advertise") != nil && cmd.Name() != "doctor" && cmd.Name() != "config" && isTerminal(cmd.ErrOrStderr()) {
		fmt.Fprintf(cmd.ErrOrStderr(), "labreg: registry.advertise %s is %s\n", c.Registry.Advertise, from)
	}
	return c, o, nil
}
