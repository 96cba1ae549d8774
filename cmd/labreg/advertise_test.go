package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labreg/labreg/internal/testenv"
)

// TestAdvertiseSticks (#15 acceptance 7): `labreg serve --advertise A`,
// then `labreg config`, `labreg doctor` and `labreg deploy` started from a
// fresh environment (no LABREG_* variables, no config file, only the same
// runtime dir) use A, not the host's first address, and say where A came
// from.
func TestAdvertiseSticks(t *testing.T) {
	docker := testenv.Swarm(t)
	addr := freeAddr(t) // 127.0.0.1:P: not what would be derived (a non-loopback address)
	s := testenv.Serve(t, "", "--listen", addr, "--advertise", addr)
	bin := testenv.BuildLabreg(t)
	home := t.TempDir()
	env := append(testenv.EnvWithout("LABREG_"), "XDG_RUNTIME_DIR="+s.RuntimeDir, "HOME="+home,
		"XDG_CONFIG_HOME="+home+"/.config", "DOCKER_CONFIG="+t.TempDir())
	run := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("labreg %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
		return out.String() + errb.String(), code
	}
	from := "from: the running labreg serve (pid "

	out, code := run("config")
	if code != 0 || !strings.Contains(out, `advertise: "`+addr+`"`) || !strings.Contains(out, from) {
		t.Errorf("labreg config: exit %d; want advertise %s %s…)", code, addr, from)
	}
	out, code = run("doctor", "--local")
	if code != 0 || !strings.Contains(out, "registry.advertise "+addr+" ("+from) || !strings.Contains(out, "ok   registry reachable: GET http://"+addr+"/v2/") {
		t.Errorf("labreg doctor: exit %d; want it to check %s and say it came from the running server", code, addr)
	}

	testenv.Push(t, addr+"/sticky:1", testenv.BusyboxImage(t, nil, func(c *v1.Config) { c.Cmd = []string{"sleep", "600"} }))
	node, err := exec.Command(docker, "info", "--format", "{{.Swarm.NodeID}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	svc := "sticky-" + strings.ReplaceAll(addr[strings.LastIndex(addr, ":")+1:], ":", "")
	t.Cleanup(func() {
		exec.Command(docker, "service", "rm", svc).Run()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			o, _ := exec.Command(docker, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc).Output()
			if len(bytes.TrimSpace(o)) == 0 {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	out, code = run("deploy", svc, "--image", "sticky:1", "--constraint", "node.id=="+strings.TrimSpace(string(node)),
		"--progress", "plain", "--timeout", "2m")
	if code != 0 || !strings.Contains(out, svc+"\t"+addr+"/sticky:1@sha256:") {
		t.Errorf("labreg deploy: exit %d; want the image resolved against %s", code, addr)
	}
}
