package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
)

// TestScrubCLIOffline: with no server, scrub works on the data dir: it
// lists a dangling tag and a stray temp file with exit 1, --repair fixes
// both (exit 0), and a second check finds nothing.
func TestScrubCLIOffline(t *testing.T) {
	dir := t.TempDir()
	tags := "storage/docker/registry/v2/repositories/team/app/_manifests/tags/"
	testenv.WriteFiles(t, dir, map[string]string{
		tags + "gone/current/link":          "sha256:" + strings.Repeat("cd", 32),
		"events.jsonl.00112233445566ff.tmp": "{",
	})
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, "events.jsonl.00112233445566ff.tmp"), old, old)
	noUI := "http://" + freeAddr(t)

	code, stdout, stderr := runCLI(t, "scrub", "--ui-url", noUI, "--data", dir)
	if code != 1 || !strings.Contains(stdout, "dangling_tag") || !strings.Contains(stdout, "team/app:gone") ||
		!strings.Contains(stdout, "stray_temp") || !strings.Contains(stderr, "2 problems found") {
		t.Errorf("scrub of a damaged data dir: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "scrub", "--repair", "--ui-url", noUI, "--data", dir)
	if code != 0 || !strings.Contains(stdout, "2 problems, 2 repaired") {
		t.Errorf("scrub --repair: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "scrub", "--ui-url", noUI, "--data", dir)
	if code != 0 || !strings.Contains(stdout, "0 problems") {
		t.Errorf("scrub after repair: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
}
