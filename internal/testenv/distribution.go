package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// DistributionBinary returns the path of distribution's own registry
// binary (cmd/registry, at the version labreg embeds), the "before" of
// the benchmarks that compare labreg with it: $LABREG_DISTRIBUTION (set
// by .ci/run, which builds it in a tools module) or `registry` in PATH.
// Without it the caller skips loudly, or fails under LABREG_E2E=1.
func DistributionBinary(t testing.TB) string {
	t.Helper()
	return Binary(t, "LABREG_DISTRIBUTION", "registry", "distribution's registry binary",
		".ci/run builds it in a tools module: see build_distribution there")
}

// DistributionProcess is one distribution registry started by
// StartDistribution.
type DistributionProcess struct {
	Addr string // where it listens, 127.0.0.1:PORT
	cmd  *exec.Cmd
	log  Buffer
}

// Pid is the registry's process id (to read its /proc/PID files).
func (d *DistributionProcess) Pid() int { return d.cmd.Process.Pid }

// Log is what the registry has written to stdout and stderr so far.
func (d *DistributionProcess) Log() string { return d.log.String() }

// StartDistribution runs distribution's own registry binary
// (DistributionBinary) as `registry serve CONFIG` on a free port of
// 127.0.0.1, with a generated config: log level error, no access log, a
// random HTTP secret, and storageYAML as the storage section, e.g.
//
//	filesystem:
//	  rootdirectory: /some/dir
//	delete:
//	  enabled: true
//
// (YAML as it goes under `storage:`, not indented). It returns once /v2/
// answers. When the test ends the registry is killed; its log is logged
// if the test failed. It dies with the test binary.
func StartDistribution(t testing.TB, storageYAML string) *DistributionProcess {
	t.Helper()
	bin := DistributionBinary(t)
	secret := make([]byte, 32)
	rand.Read(secret)
	var indented strings.Builder
	for _, l := range strings.Split(strings.TrimRight(storageYAML, "\n"), "\n") {
		indented.WriteString("  " + l + "\n")
	}
	dir := t.TempDir()
	// The port is chosen by listening and closing; should another process
	// take it before the registry binds it, the registry exits and the
	// next port is tried.
	var lastLog string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nhttp:\n  addr: %s\n  secret: %s\nstorage:\n%s",
			addr, hex.EncodeToString(secret), indented.String())
		path := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		d, exited := startDistribution(t, bin, path, addr)
		if d != nil {
			return d
		}
		lastLog = exited
		if !strings.Contains(exited, "address already in use") {
			break
		}
	}
	t.Fatalf("distribution's registry did not start:\n%s", tailBytes(lastLog, 6000))
	return nil
}

// startDistribution starts bin with the config at path and waits for
// /v2/ on addr; it returns the process, or nil and the log of a process
// that exited first.
func startDistribution(t testing.TB, bin, path, addr string) (*DistributionProcess, string) {
	t.Helper()
	d := &DistributionProcess{Addr: addr, cmd: exec.Command(bin, "serve", path)}
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	exited, err := startChild(d.cmd)
	if err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		d.cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		select {
		case <-exited:
			return nil, d.log.String()
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("distribution's registry did not answer on http://%s/v2/ within 30s (last: %v)\n%s",
				addr, err, tailBytes(d.log.String(), 6000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("distribution's registry log (tail):\n%s", tailBytes(d.log.String(), 6000))
		}
	})
	return d, ""
}
