package main

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestGCKeepsWhatSwarmUses (#13 acceptance 3): after blue -> green and a
// re-push of blue, blue's old digest is untagged but is the service's
// rollback target. `labreg gc --remove-untagged`, online (through the UI's
// API) and offline, keeps it and the dry run says why; a digest no service
// uses goes as before; `labreg rollback` works afterwards. With no engine
// to ask, a real --remove-untagged is refused and a dry run says it could
// not check.
func TestGCKeepsWhatSwarmUses(t *testing.T) {
	docker := testenv.Docker(t)
	testenv.SwarmServices(t)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // no other test's server state
	dir := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: dir})
	web, err := newWebUI(srv, addr, false, nil, dir, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(web)
	t.Cleanup(hs.Close)

	image := func(word string) v1.Image {
		return testenv.BusyboxImage(t, map[string]string{"word": word}, func(c *v1.Config) {
			c.Entrypoint = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"}
		})
	}
	run := func(args ...string) (string, string, int) {
		t.Helper()
		code, out, errs := runCLI(t, args...)
		t.Logf("labreg %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
		return out, errs, code
	}
	pullable := func(d string) bool {
		ref, _ := name.ParseReference(addr+"/gcswarm@"+d, name.Insecure)
		_, err := remote.Get(ref)
		return err == nil
	}
	node, err := exec.Command(docker, "info", "--format", "{{.Swarm.NodeID}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	svc := "gcswarm-" + addr[strings.LastIndex(addr, ":")+1:]
	t.Cleanup(func() { removeService(t, docker, svc) })

	blue := testenv.Push(t, addr+"/gcswarm:blue", image("blue")).String()
	testenv.Push(t, addr+"/gcswarm:green", image("green"))
	for _, tag := range []string{"blue", "green"} {
		if _, _, code := run("deploy", svc, "--image", addr+"/gcswarm:"+tag, "--constraint", "node.id=="+strings.TrimSpace(string(node)),
			"--progress", "quiet", "--timeout", "2m"); code != 0 {
			t.Fatalf("deploy %s: exit %d", tag, code)
		}
	}
	testenv.Push(t, addr+"/gcswarm:blue", image("blue, rebuilt")) // blue's old digest is untagged now
	unused := testenv.Push(t, addr+"/gcswarm:unused", image("unused")).String()
	if _, err := srv.Catalog().DeleteTag(t.Context(), "gcswarm", "unused"); err != nil {
		t.Fatal(err)
	}

	out, _, code := run("gc", "--remove-untagged", "--dry-run", "--ui-url", hs.URL)
	if code != 0 || !regexp.MustCompile(`kept\s+gcswarm@`+blue+`\s+used by service `+svc+` \(previous spec\)`).MatchString(out) {
		t.Errorf("online dry run: exit %d; want blue's digest %s listed as kept: used by service %s (previous spec)", code, blue, svc)
	}
	if !regexp.MustCompile(`manifest\s+gcswarm@` + unused).MatchString(out) {
		t.Errorf("online dry run does not list the unused digest %s as removable", unused)
	}
	if _, _, code := run("gc", "--remove-untagged", "--ui-url", hs.URL); code != 0 {
		t.Fatalf("online gc: exit %d", code)
	}
	if !pullable(blue) {
		t.Errorf("online gc removed blue's digest %s, which the service rolls back to", blue)
	}
	if pullable(unused) {
		t.Errorf("online gc kept the unused digest %s", unused)
	}

	unused2 := testenv.Push(t, addr+"/gcswarm:unused2", image("unused 2")).String()
	if _, err := srv.Catalog().DeleteTag(t.Context(), "gcswarm", "unused2"); err != nil {
		t.Fatal(err)
	}
	out, _, code = run("gc", "--remove-untagged", "--offline", "--data", dir, "-v")
	if code != 0 || !regexp.MustCompile(`kept\s+gcswarm@`+blue).MatchString(out) {
		t.Errorf("offline gc: exit %d; want blue's digest listed as kept", code)
	}
	if !pullable(blue) {
		t.Errorf("offline gc removed blue's digest %s", blue)
	}
	if pullable(unused2) {
		t.Errorf("offline gc kept the unused digest %s", unused2)
	}

	if _, _, code := run("rollback", svc, "--progress", "quiet", "--timeout", "2m"); code != 0 {
		t.Errorf("rollback after gc: exit %d", code)
	}
	img, err := exec.Command(docker, "service", "inspect", svc, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(img)), "@"+blue) {
		t.Errorf("after rollback the service runs %q (%v), want blue's digest %s", img, err, blue)
	}

	// No engine to ask.
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	_, errs, code := run("gc", "--remove-untagged", "--offline", "--data", dir)
	if code != 1 || !strings.Contains(errs, "could not check which images swarm services use") || !strings.Contains(errs, "--ignore-swarm") {
		t.Errorf("offline gc without an engine: exit %d; want 1 and that it could not check", code)
	}
	_, errs, code = run("gc", "--remove-untagged", "--dry-run", "--offline", "--data", dir)
	if code != 0 || !strings.Contains(errs, "could not check which images swarm services use") {
		t.Errorf("offline dry run without an engine: exit %d; want 0 and a note that it could not check", code)
	}
	if !pullable(blue) {
		t.Errorf("gc without an engine removed blue's digest")
	}
}

// removeService removes a swarm service and waits for its containers.
func removeService(t *testing.T, docker, svc string) {
	exec.Command(docker, "service", "rm", svc).Run()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		o, _ := exec.Command(docker, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc).Output()
		if len(bytes.TrimSpace(o)) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
