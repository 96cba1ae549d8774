package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
