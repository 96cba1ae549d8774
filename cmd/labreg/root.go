package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/labreg/labreg/config"
)

// streams are the command's standard streams; tests substitute buffers.
type streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// isTerminal reports whether w is a terminal (progress is drawn only there
// unless asked for).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Exit codes, decided here and nowhere else.
const (
	exitOK      = 0
	exitError   = 1 // the command ran and failed
	exitUsage   = 2 // bad flags, arguments or configuration
	exitRollout = 3 // a rollout did not converge (paused or rolled back)
)

// usageError marks errors in what the user typed.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// codedError carries a specific exit code.
type codedError struct {
	code int
	err  error
}

func (e codedError) Error() string { return e.err.Error() }
func (e codedError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ue usageError
	var ce codedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.As(err, &ue):
		return exitUsage
	default:
		return exitError
	}
}

func run(ctx context.Context, args []string, io streams) int {
	root := newRootCmd(io)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil {
		if cmd != nil && isFlagError(err) {
			err = usageError{err}
		}
		fmt.Fprintf(io.Err, "labreg: %v\n", err)
	}
	return exitCode(err)
}

func isFlagError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown flag") || strings.HasPrefix(s, "unknown shorthand") ||
		strings.HasPrefix(s, "unknown command") || strings.Contains(s, "flag needs an argument") ||
		strings.HasPrefix(s, "invalid argument") || strings.Contains(s, "arg(s)")
}

func newRootCmd(io streams) *cobra.Command {
	root := &cobra.Command{
		Use:           "labreg",
		Short:         "Private registry and image pipeline for a Docker Swarm cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	root.PersistentFlags().String("config", "", "YAML config file (also $LABREG_CONFIG)")
	root.AddCommand(
		newServeCmd(io),
		newConfigCmd(io),
		newVersionCmd(io),
		newDownCmd(io),
	)
	for _, c := range extraCommands {
		root.AddCommand(c(io))
	}
	return root
}

// extraCommands lets each command file register itself.
var extraCommands []func(streams) *cobra.Command

// bindConfig registers the flags of every config field whose key starts
// with one of the prefixes ("registry.", "ui.").
func bindConfig(cmd *cobra.Command, prefixes ...string) {
	def := config.Default()
	for _, f := range def.Fields() {
		for _, p := range prefixes {
			if !strings.HasPrefix(f.Key, p) {
				continue
			}
			usage := fmt.Sprintf("%s (%s)", f.Usage, f.Env)
			if f.Kind.String() == "bool" {
				cmd.Flags().Bool(f.Flag, f.String() == "true", usage)
			} else {
				cmd.Flags().String(f.Flag, f.String(), usage)
			}
		}
	}
}

// loadConfig builds the effective config from defaults, file, env and the
// flags the user set on cmd (see loadConfigOrigins).
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	c, _, err := loadConfigOrigins(cmd)
	return c, err
}

func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Log.Level))
	o := &slog.HandlerOptions{Level: lvl}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}
