package main

import (
	"github.com/spf13/cobra"
)

func newConfigCmd(io streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print the effective configuration (defaults, file, LABREG_* env, flags)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			b, err := c.YAML()
			if err != nil {
				return err
			}
			_, err = io.Out.Write(b)
			return err
		},
	}
	bindConfig(cmd, "")
	return cmd
}
