package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, streams{In: strings.NewReader(""), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

func TestCLIExitCodesAndMessages(t *testing.T) {
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badCfg, []byte("registry:\n  listen: \":5000\"\n  colour: blue\n"), 0o644)
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, []byte("x"), 0o644)
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrHas  string
		stdoutNone bool
		suggests   bool // cobra's "Did you mean" follows the error
	}{
		{name: "version", args: []string{"version"}, code: 0, stdout: "labreg "},
		{name: "config prints effective values", args: []string{"config", "--listen", "127.0.0.1:5055"}, code: 0, stdout: `listen: "127.0.0.1:5055"  # LABREG_LISTEN, --listen`},
		{name: "unknown flag", args: []string{"serve", "--lisen", ":5000"}, code: 2, stderrHas: "unknown flag: --lisen", stdoutNone: true},
		{name: "unknown command", args: []string{"srve"}, code: 2, stderrHas: `unknown command "srve"`, suggests: true},
		{name: "unknown config key", args: []string{"serve", "--config", badCfg}, code: 2, stderrHas: `line 3: unknown key "registry.colour"`, stdoutNone: true},
		{name: "bad listen value", args: []string{"serve", "--listen", "5000"}, code: 2, stderrHas: `registry.listen: "5000" is not HOST:PORT`},
		{name: "config file before the command", args: []string{"--config", badCfg, "serve"}, code: 2, stderrHas: `line 3: unknown key "registry.colour"`, stdoutNone: true},
		{name: "config file before deploy (its --config is a swarm config)", args: []string{"--config", badCfg, "deploy", "web", "--image", "x"}, code: 2, stderrHas: `line 3: unknown key "registry.colour"`},
		{name: "deploy --config with a plain path says where the file goes", args: []string{"deploy", "web", "--image", "x", "--config", badCfg}, code: 2,
			stderrHas: `--config "` + badCfg + `": deploy's --config is a swarm config (src=FILE,target=PATH); give labreg's config file before the command (labreg --config ` + badCfg + " deploy)"},
		{name: "flag without its value", args: []string{"build", "--engine"}, code: 2, stderrHas: "flag needs an argument: --engine"},
		{name: "flag value of the wrong type", args: []string{"deploy", "web", "--replicas", "many"}, code: 2, stderrHas: `invalid argument "many" for "--replicas"`},
		{name: "too many arguments", args: []string{"version", "extra"}, code: 2, stderrHas: `unknown command "extra" for "labreg version"`},
		{name: "too few arguments", args: []string{"build"}, code: 2, stderrHas: "requires at least 1 arg(s), only received 0"},
		{name: "bad --progress", args: []string{"build", "--progress", "loud", "."}, code: 2, stderrHas: `--progress "loud": want auto, plain or quiet`},
		{name: "doctor node-probe without its arguments", args: []string{"doctor", "node-probe"}, code: 2, stderrHas: "accepts 2 arg(s), received 0"},
		{name: "doctor node-probe of an address without a port", args: []string{"doctor", "node-probe", "registry.lab", "labreg-doctor@sha256:00"}, code: 1,
			stdout: `registry address "registry.lab": want HOST:PORT`},
		{name: "data dir is a file", args: []string{"serve", "--listen", "127.0.0.1:0", "--data", notDir, "--ui-listen", ""}, code: 1, stderrHas: "data directory " + notDir, stdoutNone: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, errs)
			}
			if tt.stdout != "" && !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout %q does not contain %q", out, tt.stdout)
			}
			if tt.stdoutNone && out != "" {
				t.Errorf("stdout should be empty on error, got %q", out)
			}
			if tt.stderrHas != "" {
				if !strings.Contains(errs, tt.stderrHas) {
					t.Errorf("stderr %q does not contain %q", errs, tt.stderrHas)
				}
				if n := strings.Count(strings.TrimSpace(errs), "\n"); n > 0 && !tt.suggests {
					t.Errorf("error should be one line, got %d lines: %q", n+1, errs)
				}
				if tt.suggests && !strings.Contains(errs, "Did you mean this?\n\tserve") {
					t.Errorf("no suggestion in %q", errs)
				}
			}
		})
	}
}

// TestProgressModes: every --progress flag takes auto, plain and quiet
// (and build's old word none); auto shows progress only on a terminal.
func TestProgressModes(t *testing.T) {
	var stderr bytes.Buffer
	for _, tc := range []struct {
		mode string
		want io.Writer
		err  bool
	}{
		{"plain", &stderr, false},
		{"auto", nil, false}, // a buffer is not a terminal
		{"quiet", nil, false},
		{"none", nil, false},
		{"loud", nil, true},
	} {
		w, err := progressWriter(tc.mode, &stderr)
		if w != tc.want || (err != nil) != tc.err {
			t.Errorf("progressWriter(%q) = %v, %v; want %v, error %v", tc.mode, w, err, tc.want, tc.err)
		}
		if err != nil && exitCode(err) != exitUsage {
			t.Errorf("progressWriter(%q): exit %d, want %d", tc.mode, exitCode(err), exitUsage)
		}
	}
	s := streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}
	for _, cmd := range []*cobra.Command{newBuildCmd(s), newDeployCmd(s), newRollbackCmd(s)} {
		f := cmd.Flags().Lookup("progress")
		if f == nil || f.DefValue != progressAuto || !strings.Contains(f.Usage, "auto (when it is a terminal), plain (always) or quiet") {
			t.Errorf("%s --progress = %+v, want the shared auto|plain|quiet flag", cmd.Name(), f)
		}
	}
}

// TestBuildFlags parses `labreg build` flags into options without building.
func TestBuildFlags(t *testing.T) {
	var got *buildOptions
	cmd := buildCmd(streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}, func(_ context.Context, o *buildOptions) error {
		got = o
		return nil
	})
	cmd.SetArgs([]string{"--no-push", "--layout", "out", "-t", "a:1", "--build-arg", "K=V", "--progress", "none", "--registry", "reg.lab:5000", "images/a"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.push || got.layout != "out" || strings.Join(got.tags, ",") != "a:1" || strings.Join(got.buildArgs, ",") != "K=V" ||
		got.progress != "none" || got.registry != "reg.lab:5000" || strings.Join(got.dirs, ",") != "images/a" || got.engine != "auto" {
		t.Fatalf("options = %+v", got)
	}
}

// Every command is listed once in labreg's help (`down` was listed twice).
func TestHelpListsEachCommandOnce(t *testing.T) {
	code, out, errOut := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("labreg --help: exit %d: %s", code, errOut)
	}
	seen := map[string]int{}
	inList := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "Available Commands:"):
			inList = true
		case inList && strings.TrimSpace(line) == "":
			inList = false
		case inList:
			seen[strings.Fields(line)[0]]++
		}
	}
	if len(seen) < 10 {
		t.Fatalf("help lists %d commands, want every command:\n%s", len(seen), out)
	}
	for name, n := range seen {
		if n != 1 {
			t.Errorf("help lists %q %d times", name, n)
		}
	}
}
