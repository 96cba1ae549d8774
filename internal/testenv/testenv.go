// Package testenv finds or starts the real components labreg's tests run
// against: an in-process registry, the Docker Engine, buildkitd and
// Chromium. A component that is missing skips the test with a loud reason,
// except when LABREG_E2E=1 (set by .ci/run), where it fails the test.
package testenv

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labreg/labreg/registry"
)

// E2E reports whether LABREG_E2E=1: missing components are failures.
func E2E() bool { return os.Getenv("LABREG_E2E") == "1" }

// Require stops the test when ok is false: Fatal under LABREG_E2E=1,
// otherwise a Skip that says what is missing and how to get it.
func Require(t testing.TB, what string, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if E2E() {
		t.Fatalf("LABREG_E2E=1 but %s is not available: %s", what, reason)
	}
	t.Skipf("SKIPPED: %s not available (%s); run .ci/run, or set LABREG_E2E=1 to make this a failure", what, reason)
}

// Registry starts an in-process labreg registry on 127.0.0.1 with a fresh
// data dir and returns its HOST:PORT. It stops when the test ends.
func Registry(t testing.TB, opts registry.Options) (string, *registry.Server) {
	t.Helper()
	addr, srv, _ := startRegistry(t, opts, "127.0.0.1:0")
	return addr.String(), srv
}

// StoppableRegistry is Registry with a stop function: it stops the
// server (serving ends, its data dir is free for an offline tool) and
// returns once Serve has returned. Calling it again does nothing; the
// test's end calls it.
func StoppableRegistry(t testing.TB, opts registry.Options) (string, *registry.Server, func()) {
	t.Helper()
	addr, srv, stop := startRegistry(t, opts, "127.0.0.1:0")
	return addr.String(), srv, stop
}

// startRegistry starts an in-process labreg registry listening on listen,
// with a fresh data dir unless opts names one, until stop or the test's end.
func startRegistry(t testing.TB, opts registry.Options, listen string) (net.Addr, *registry.Server, func()) {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	// distribution logs through the process-wide logrus; as labreg's main
	// sends it to its logger, the tests send it nowhere.
	quietLogrus.Do(func() { registry.RouteLogrus(slog.New(slog.DiscardHandler)) })
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := registry.New(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr, err := srv.Listen(listen)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return addr, srv, stop
}

var quietLogrus sync.Once

// Docker requires a reachable Docker Engine (DOCKER_HOST or the default
// socket) and the docker CLI, and returns the docker binary path.
func Docker(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("docker")
	Require(t, "docker CLI", err == nil, "docker not in PATH (apt-get install docker.io)")
	out, err := exec.Command(bin, "version", "--format", "{{.Server.APIVersion}}").CombinedOutput()
	Require(t, "Docker Engine", err == nil, strings.TrimSpace(string(out)))
	return bin
}

// Swarm requires a Docker Engine that is a swarm manager.
func Swarm(t testing.TB) string {
	t.Helper()
	bin := Docker(t)
	out, err := exec.Command(bin, "info", "--format", "{{.Swarm.ControlAvailable}}").CombinedOutput()
	Require(t, "swarm manager", err == nil && strings.TrimSpace(string(out)) == "true",
		"this engine is not a swarm manager (docker swarm init): "+strings.TrimSpace(string(out)))
	return bin
}

// Buildkit requires a running buildkitd and returns its address, from
// BUILDKIT_HOST or the default root socket.
func Buildkit(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("BUILDKIT_HOST")
	if addr == "" {
		addr = "unix:///run/buildkit/buildkitd.sock"
	}
	ok := true
	if p, found := strings.CutPrefix(addr, "unix://"); found {
		c, err := net.DialTimeout("unix", p, 2*time.Second)
		ok = err == nil
		if c != nil {
			c.Close()
		}
	}
	Require(t, "buildkitd", ok, "nothing listens on "+addr+" (set BUILDKIT_HOST)")
	return addr
}

// Chromium requires a Chromium binary and returns its path.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("LABREG_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	Require(t, "chromium", false, "no /usr/bin/chromium (apt-get install chromium)")
	return ""
}

// Tool requires a binary in PATH and returns its path.
func Tool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, name, err == nil, name+" not in PATH ("+install+")")
	return p
}

// Binary requires the program that env names, or name in PATH, and
// returns its path; what and how say what it is and how to get it.
func Binary(t testing.TB, env, name, what, how string) string {
	t.Helper()
	bin := os.Getenv(env)
	if bin == "" {
		bin, _ = exec.LookPath(name)
	}
	_, err := os.Stat(bin)
	Require(t, what, bin != "" && err == nil, "set "+env+" or put "+name+" in PATH ("+how+")")
	return bin
}

// WaitHTTP polls url until it answers with a status below 500 or the
// timeout passes.
func WaitHTTP(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer within %s: %v", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RepoRoot returns the repository's top directory (where go.mod is).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// BuildLabreg compiles cmd/labreg (statically, CGO_ENABLED=0) once per test
// binary into a temp dir and returns the path of the binary.
func BuildLabreg(t testing.TB) string {
	t.Helper()
	labregOnce.Do(func() {
		dir, err := os.MkdirTemp("", "labreg-bin-")
		if err != nil {
			labregErr = err
			return
		}
		labregPath = filepath.Join(dir, "labreg")
		cmd := exec.Command("go", "build", "-o", labregPath, "./cmd/labreg")
		cmd.Dir = RepoRoot(t)
		// static, as `make build` and labreg's own image build it: doctor
		// runs this very binary on the nodes (deploy/doctor_resolve.go)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			labregErr = &buildError{out: string(out), err: err}
		}
	})
	if labregErr != nil {
		t.Fatalf("building labreg: %v", labregErr)
	}
	return labregPath
}
