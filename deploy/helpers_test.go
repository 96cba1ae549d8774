package deploy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// suffix is a random name suffix so parallel CI runs never collide.
func suffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// pushImage builds a busybox image running entrypoint with files and
// pushes it to ref; it returns the manifest digest.
func pushImage(t testing.TB, ref string, auth authn.Authenticator, files map[string]string, entrypoint ...string) string {
	t.Helper()
	if auth == nil {
		auth = authn.Anonymous
	}
	return testenv.Push(t, ref, buildImage(t, files, entrypoint...), remote.WithAuth(auth)).String()
}

// buildImage is a busybox image (testenv.BusyboxImage) running entrypoint
// with files.
func buildImage(t testing.TB, files map[string]string, entrypoint ...string) v1.Image {
	t.Helper()
	return testenv.BusyboxImage(t, files, func(c *v1.Config) { c.Entrypoint = entrypoint })
}

// pageImage is a busybox httpd serving page on port 80.
func pageImage(t testing.TB, ref string, auth authn.Authenticator, page string) string {
	// busybox httpd as PID 1 ignores SIGTERM; a shell that exits on TERM
	// keeps updates from waiting out the 10s stop grace period.
	return pushImage(t, ref, auth, map[string]string{"www/index.html": page},
		"/bin/sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait")
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// dockerConfig writes a DOCKER_CONFIG dir; with user set it holds that
// registry credential.
func dockerConfig(t testing.TB, reg, user, pass string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := map[string]any{"auths": map[string]any{}}
	if user != "" {
		cfg["auths"] = map[string]any{reg: map[string]string{
			"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)),
		}}
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// authRegistry starts a registry with one htpasswd user.
func authRegistry(t testing.TB, user, pass string) string {
	t.Helper()
	f := testenv.Htpasswd(t, user, pass)
	addr, _ := testenv.Registry(t, registry.Options{Htpasswd: f})
	return addr
}

// result is one labreg run.
type result struct {
	out, err string
	code     int
	took     time.Duration
}

// runLabreg runs the labreg binary bin with env added to the environment
// (from any goroutine: it never fails the test); code -1 when it could not
// run.
func runLabreg(bin string, env []string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	r := result{out: o.String(), err: e.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.code, r.err = -1, err.Error()
	}
	return r
}

// labreg runs the labreg binary with env added to the environment.
func labreg(t testing.TB, env []string, args ...string) result {
	t.Helper()
	r := runLabreg(testenv.BuildLabreg(t), env, args...)
	if r.code == -1 {
		t.Fatalf("running labreg %v: %s", args, r.err)
	}
	t.Logf("labreg %s (exit %d, %s)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond), r.out, r.err)
	return r
}

// removeService removes a service (and waits for its tasks to go) when
// the test ends.
func removeService(t testing.TB, docker, name string) {
	t.Cleanup(func() {
		exec.Command(docker, "service", "rm", name).Run()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			out, _ := exec.Command(docker, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+name).Output()
			if len(bytes.TrimSpace(out)) == 0 {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// get fetches url, retrying briefly while the port comes up.
func get(t testing.TB, url string) string {
	t.Helper()
	var last error
	c := &http.Client{Timeout: 2 * time.Second}
	for i := 0; i < 50; i++ {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

// onManager is the constraint that keeps a test's tasks on this engine's
// node: worker nodes other tests join (testenv.Worker) cannot reach a
// registry on 127.0.0.1.
func onManager(t testing.TB, docker string) string {
	t.Helper()
	out, err := exec.Command(docker, "info", "--format", "{{.Swarm.NodeID}}").Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("docker info: node ID: %v", err)
	}
	return "node.id==" + string(bytes.TrimSpace(out))
}

// recorder collects a client's progress events (deploy.Options.OnProgress).
type recorder struct {
	mu     sync.Mutex
	events []deploy.Progress
}

func (r *recorder) on(p deploy.Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, p)
}

// all returns the events so far, in order.
func (r *recorder) all() []deploy.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]deploy.Progress(nil), r.events...)
}

// Reset forgets the events so far.
func (r *recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = nil
}

// String lists the events, one a line, for test logs and for checks that
// no secret shows in any field.
func (r *recorder) String() string {
	var b strings.Builder
	for _, p := range r.all() {
		fmt.Fprintf(&b, "%+v\n", p)
	}
	return b.String()
}

// index is the position of the first event f accepts, or -1.
func (r *recorder) index(f func(deploy.Progress) bool) int {
	for i, p := range r.all() {
		if f(p) {
			return i
		}
	}
	return -1
}

// taskRunning accepts a task event of svc at slot (replicated, 0 for
// global) or node (global) that runs digest.
func taskRunning(svc string, slot int, node, digest string) func(deploy.Progress) bool {
	return func(p deploy.Progress) bool {
		return p.Stage == deploy.StageTask && p.Service == svc && p.State == "running" &&
			strings.HasSuffix(p.Image, "@"+digest) && (slot == 0 || p.Slot == slot) && (node == "" || p.Node == node)
	}
}

// runningOn lists the nodes that run a task of svc in the lab, sorted (a testenv Lab).
func runningOn(lab *testenv.Lab, svc string) []string {
	out, _ := lab.Docker("service", "ps", svc, "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}")
	var nodes []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == "Running" {
			nodes = append(nodes, f[0])
		}
	}
	slices.Sort(nodes)
	return nodes
}

// labEnv is the environment of labreg runs against lab's swarm with
// advertise as the registry: the manager's engine, a docker config of
// its own, a runtime dir of its own.
func labEnv(t *testing.T, lab *testenv.Lab, advertise string) []string {
	return append(slices.Clone(lab.Env), "LABREG_ADVERTISE="+advertise, "DOCKER_CONFIG="+dockerConfig(t, advertise, "", ""),
		"XDG_RUNTIME_DIR="+t.TempDir())
}

// labDocker runs the docker CLI against lab's manager; a failure ends t.
func labDocker(t *testing.T, lab *testenv.Lab, args ...string) string {
	t.Helper()
	out, err := lab.Docker(args...)
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}
