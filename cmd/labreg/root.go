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
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(io.Err, "labreg: %v\n", err)
	}
	return exitCode(err)
}

// commands are labreg's subcommands: adding one is a line here (help
// lists them sorted whatever the order).
var commands = []func(streams) *cobra.Command{
	newBuildCmd,
	newConfigCmd,
	newDeployCmd,
	newDoctorCmd,
	newDownCmd,
	newGCCmd,
	newLsCmd,
	newNodeCmd,
	newRmCmd,
	newRollbackCmd,
	newScrubCmd,
	newServeCmd,
	newStatusCmd,
	newVersionCmd,
}

// configFlag is the root flag naming labreg's YAML config file. Like
// docker's global flags it may go before the command (labreg --config F
// deploy ...), and after it for commands without their own --config
// (deploy's --config is a swarm config, as in docker service create).
const configFlag = "config"

func newRootCmd(io streams) *cobra.Command {
	root := &cobra.Command{
		Use:           "labreg",
		Short:         "Private registry and image pipeline for a Docker Swarm cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Root flags before the command are parsed (labreg --config F deploy).
		TraverseChildren: true,
		// Runnable, so that an unknown command reaches Args below instead
		// of cobra's untyped error; without arguments it prints help.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			var hint strings.Builder
			cmd.SuggestionsMinimumDistance = 2
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint.WriteString("\n\nDid you mean this?\n")
				for _, c := range s {
					fmt.Fprintf(&hint, "\t%s\n", c)
				}
			}
			return fmt.Errorf("unknown command %q for %q%s", args[0], cmd.CommandPath(), hint.String())
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	root.PersistentFlags().String(configFlag, "", "YAML config file (also $LABREG_CONFIG); for deploy, give it before the command: labreg --config FILE deploy")
	for _, c := range commands {
		root.AddCommand(c(io))
	}
	// What the user typed wrong exits 2: flags (every command inherits the
	// root's flag error func) and positional arguments.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	markArgErrors(root)
	return root
}

// markArgErrors makes the positional-argument check of cmd and every
// command below it return a usageError.
func markArgErrors(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		markArgErrors(sub)
	}
}

// Progress modes, the same for every --progress flag.
const (
	progressAuto  = "auto"  // on stderr when it is a terminal
	progressPlain = "plain" // on stderr always
	progressQuiet = "quiet" // none ("none" is accepted too: build's old word)
)

// addProgressFlag adds --progress (default auto) to cmd; what names the
// progress ("rollout progress").
func addProgressFlag(cmd *cobra.Command, mode *string, what string) {
	cmd.Flags().StringVar(mode, "progress", progressAuto, what+" on stderr: auto (when it is a terminal), plain (always) or quiet")
}

// progressWriter is where a --progress mode sends progress: stderr, or
// nil for none.
func progressWriter(mode string, stderr io.Writer) (io.Writer, error) {
	switch mode {
	case progressPlain:
		return stderr, nil
	case progressAuto, "":
		if isTerminal(stderr) {
			return stderr, nil
		}
		return nil, nil
	case progressQuiet, "none":
		return nil, nil
	}
	return nil, usageError{fmt.Errorf("--progress %q: want auto, plain or quiet", mode)}
}

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
