package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

var imageLine = regexp.MustCompile(`^(\S+/[a-z0-9._/-]+:[\w.-]+)@sha256:[0-9a-f]{64}$`)

func TestBuildCLI(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	dead := freeAddr(t)
	root := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("password"), 0o600)
	testenv.WriteFiles(t, root, map[string]string{
		"ok/site/1/Dockerfile":      "FROM scratch\nCOPY index.html /www/\n",
		"ok/site/1/index.html":      "one",
		"ok/site/2/Dockerfile":      "FROM scratch\nCOPY index.html /www/\n",
		"ok/site/2/index.html":      "two",
		"escape/x/1/Dockerfile":     "FROM scratch\nCOPY ../../secret /\n",
		"abs/x/1/Dockerfile":        "FROM scratch\nCOPY /etc/passwd /\n",
		"symlink/x/1/Dockerfile":    "FROM scratch\nCOPY secret /\n",
		"symlink/x/1/secret":        "symlink:" + secret,
		"missing/x/1/Dockerfile":    "FROM scratch\nLABEL a=b\nCOPY nope.txt /\n",
		"unknown/x/1/Dockerfile":    "FROM scratch\nCOPYY a /a\n",
		"run/x/1/Dockerfile":        "FROM scratch\nRUN echo hi\n",
		"mixed/a/1/Dockerfile":      "FROM scratch\nCOPY f /f\n",
		"mixed/a/1/f":               "f",
		"mixed/b/1/Dockerfile":      "FROM scratch\nCOPY nope /\n",
		"fromdead/x/1/Dockerfile":   "ARG REGISTRY\nFROM ${REGISTRY}/webserver:1\n",
		"notdockerfile/README.md":   "nothing here",
		"ok/site/1/.dockerignore":   "*.tmp\n",
		"ok/site/1/ignored.tmp":     "x",
		"ok/site/2/sub/.keep":       "",
		"ok/site/2/sub/index.html2": "",
	})
	df := func(p string) string { return filepath.Join(p, "Dockerfile") } // as the user named it
	tests := []struct {
		name      string
		args      []string
		code      int
		stderrHas string
		lines     []string // repo:tag per stdout line
	}{
		{"builds a directory of image directories", []string{"ok/site"}, 0, "", []string{"site:1", "site:2"}},
		{"-t renames", []string{"-t", "other:v9", "ok/site/1"}, 0, "", []string{"other:v9"}},
		{"--progress plain reports each step", []string{"--progress", "plain", "ok/site/1"}, 0, "site:1: COPY index.html /www/ (", []string{"site:1"}},
		{"context escape with ..", []string{"escape"}, 1, df("escape/x/1") + `:2: COPY: source "../../secret" is outside the build context`, nil},
		{"absolute source", []string{"abs"}, 1, df("abs/x/1") + `:2: COPY: source "/etc/passwd" is an absolute path`, nil},
		{"symlink out of the context", []string{"symlink"}, 1, df("symlink/x/1") + `:2: COPY: source "secret" is a symlink to ` + secret + `, outside the build context`, nil},
		{"missing COPY source", []string{"missing"}, 1, df("missing/x/1") + `:3: COPY: source "nope.txt" not found in build context`, nil},
		{"unknown instruction", []string{"unknown"}, 1, df("unknown/x/1") + `:2: COPYY: unknown instruction: COPYY`, nil},
		{"RUN with the native engine", []string{"--engine", "native", "run"}, 1, df("run/x/1") + `:2: RUN: needs a container, which the native engine does not run`, nil},
		{"one bad image stops all", []string{"mixed"}, 1, df("mixed/b/1") + `:2: COPY: source "nope" not found`, nil},
		{"unreachable registry", []string{"--registry", dead, "ok/site/1"}, 1, "pushing " + dead + "/site:1", nil},
		{"base from an unreachable registry", []string{"--registry", dead, "fromdead"}, 1, df("fromdead/x/1") + ":2: FROM: pulling base image " + dead + "/webserver:1", nil},
		{"no Dockerfile", []string{"notdockerfile"}, 2, "notdockerfile: no Dockerfile in it or below it", nil},
		{"bad engine", []string{"--engine", "docker", "ok/site/1"}, 2, `--engine "docker": want auto, native or buildkit`, nil},
		{"-t count", []string{"-t", "a:1", "ok/site"}, 2, "-t given 1 times for 2 image directories", nil},
		{"bad build-arg", []string{"--build-arg", "NOVALUE", "ok/site/1"}, 2, `--build-arg "NOVALUE": want KEY=VALUE`, nil},
	}
	t.Chdir(root)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testenv.Catalog(t, addr)
			args := append([]string{"build", "--registry", addr}, tt.args...)
			code, out, errs := runCLI(t, args...)
			if code != tt.code {
				t.Fatalf("exit code %d, want %d\nstderr: %s", code, tt.code, errs)
			}
			if tt.code == 0 && tt.stderrHas == "" && errs != "" {
				t.Errorf("stderr is not a terminal: no progress unless asked, got %q", errs)
			}
			if tt.stderrHas != "" && !strings.Contains(errs, tt.stderrHas) {
				t.Errorf("stderr does not contain %q:\n%s", tt.stderrHas, errs)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if out == "" {
				lines = nil
			}
			if len(lines) != len(tt.lines) {
				t.Fatalf("stdout has %d lines, want %d: %q", len(lines), len(tt.lines), out)
			}
			for i, l := range lines {
				m := imageLine.FindStringSubmatch(l)
				if m == nil || m[1] != addr+"/"+tt.lines[i] {
					t.Errorf("stdout line %q, want %s/%s@sha256:<digest>", l, addr, tt.lines[i])
				}
			}
			if tt.code != 0 {
				if after := testenv.Catalog(t, addr); len(after) != len(before) {
					t.Errorf("a failed build pushed: catalog %v -> %v", before, after)
				}
			}
		})
	}
}

// freshClone copies the repository's tracked files (as they are in the
// work tree) into a new directory: what `git clone` gives, uncommitted
// edits included.
func freshClone(t *testing.T) string {
	t.Helper()
	src := testenv.RepoRoot(t)
	var files []string
	if out, err := exec.Command("git", "-C", src, "ls-files", "-z").Output(); err == nil {
		files = strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	} else {
		// Not a git work tree: everything but build outputs and state.
		skip := map[string]bool{".git": true, "bin": true, ".labreg-data": true, "oci-layout": true,
			"images/webserver/1/webserver": true}
		err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			if skip[filepath.ToSlash(rel)] {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.IsDir() {
				files = append(files, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	dst := t.TempDir()
	for _, p := range files {
		st, err := os.Lstat(filepath.Join(src, p))
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the work tree, or a symlink/submodule
		}
		data, err := os.ReadFile(filepath.Join(src, p))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, p), data, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestMakeUpBuildsServableExampleImages is the README's main command on a
// fresh clone: `make up` starts the registry, builds the example images into it and
// keeps serving, and on a swarm manager deploys myhttpd:blue; the Docker
// Engine pulls and runs every example image and
// each serves its page on port 80. A second build of them gives
// the same digests and uploads nothing.
func TestMakeUpBuildsServableExampleImages(t *testing.T) {
	docker := testenv.Docker(t)
	testenv.Tool(t, "make", "apt-get install make")
	testenv.Tool(t, "go", "install Go")
	// On a swarm manager make up deploys myhttpd (no constraints): keep
	// other packages' extra worker nodes out meanwhile.
	isManager, _ := exec.Command(docker, "info", "--format", "{{.Swarm.ControlAvailable}}").Output()
	if strings.TrimSpace(string(isManager)) == "true" {
		testenv.SwarmServices(t)
		t.Cleanup(func() { exec.Command(docker, "service", "rm", "myhttpd").Run() })
	}
	clone := freshClone(t)
	reg := freeAddr(t)
	// As on a fresh host: the registry listens on every address and is
	// advertised on this host's address (derived), which a default engine
	// does not trust; the images are pushed through loopback.
	env := append(testenv.EnvWithout("LABREG_"),
		"LABREG_LISTEN=:"+reg[strings.LastIndex(reg, ":")+1:], "LABREG_REGISTRY="+reg,
		"LABREG_UI_LISTEN="+freeAddr(t), "DATA="+filepath.Join(t.TempDir(), "data"), "XDG_RUNTIME_DIR="+t.TempDir())
	var stdout, stderr testenv.Buffer
	up := exec.Command("make", "up")
	up.Dir, up.Env, up.Stdout, up.Stderr = clone, env, &stdout, &stderr
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- up.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-up.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-up.Process.Pid, syscall.SIGKILL)
		}
	})

	want := map[string]string{ // image -> text its page must contain
		"myhttpd:blue":  "<h1>blue</h1>",
		"myhttpd:green": "<h1>green</h1>",
		"samsung:1.0":   "<title>Samsung Electronics</title>",
		"samsung:2.0":   "<title>Samsung Electronics - New Galaxy</title>",
	}
	digests := map[string]string{}
	deadline := time.Now().Add(5 * time.Minute)
	for len(digests) < 5 {
		select {
		case err := <-exited:
			t.Fatalf("make up exited (%v) before building every image\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("make up did not build 5 images in 5m\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		for _, l := range strings.Split(stdout.String(), "\n") {
			if ref, dg, ok := strings.Cut(l, "@"); ok && strings.HasPrefix(ref, reg+"/") && !strings.Contains(dg, "\t") {
				digests[strings.TrimPrefix(ref, reg+"/")] = dg
			}
		}
	}
	if _, ok := digests["webserver:1"]; !ok {
		t.Errorf("make up did not build the base image webserver:1: %v", digests)
	}
	// Where this engine is a swarm manager that trusts the registry (here:
	// 127.0.0.1), make up also deploys the lab's myhttpd service at blue.
	for !strings.Contains(stderr.String(), "registry still serving") {
		select {
		case err := <-exited:
			t.Fatalf("make up exited (%v) after building\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("make up did not finish its deploy step in 5m\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}
	// What the user sees (#13 acceptance 4): where the registry and UI
	// are, one line per image, what was deployed; no log lines.
	terminal := strings.TrimSpace(stdout.String() + stderr.String())
	t.Logf("make up printed:\n%s", terminal)
	if n := len(strings.Split(terminal, "\n")); n > 15 || strings.Contains(terminal, "ERROR") || strings.Contains(terminal, "level=") {
		t.Errorf("make up printed %d lines (want <= 15, no log lines):\n%s", n, terminal)
	}
	if !strings.Contains(terminal, "serve.log") {
		t.Errorf("make up does not name the server's log file:\n%s", terminal)
	}
	if strings.TrimSpace(string(isManager)) == "true" {
		var deployed string
		for _, l := range strings.Split(stdout.String(), "\n") {
			if strings.HasPrefix(l, "myhttpd\t") {
				deployed = l
			}
		}
		nodes, _ := exec.Command(docker, "info", "--format", "{{.Swarm.Nodes}}").Output()
		if strings.TrimSpace(string(nodes)) == "1" && !strings.Contains(stderr.String(), "pulls through "+reg+" instead") {
			t.Errorf("make up on a one-node swarm whose engine does not trust the advertised address does not say it deploys through %s:\n%s", reg, terminal)
		}
		if !strings.Contains(deployed, "/myhttpd:blue@"+digests["myhttpd:blue"]) {
			t.Errorf("make up on a swarm manager did not deploy myhttpd:blue (%s); stdout:\n%s", digests["myhttpd:blue"], stdout.String())
		}
		out, err := exec.Command(docker, "service", "inspect", "myhttpd", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").CombinedOutput()
		if err != nil || !strings.Contains(string(out), digests["myhttpd:blue"]) {
			t.Errorf("service myhttpd runs %q (%v), want the blue digest %s", out, err, digests["myhttpd:blue"])
		}
	}
	// Still serving after the build (and deploy).
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-exited:
		t.Fatalf("make up exited after building (%v); it must keep serving\nstderr:\n%s", err, stderr.String())
	default:
	}

	for img, text := range want {
		t.Run(img, func(t *testing.T) {
			ref := reg + "/" + img
			if out, err := exec.Command(docker, "pull", ref).CombinedOutput(); err != nil {
				t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
			}
			t.Cleanup(func() { exec.Command(docker, "rmi", "-f", ref).Run() })
			port := freeAddr(t)
			_, p, _ := net.SplitHostPort(port)
			cname := fmt.Sprintf("labreg-build-test-%s-%d", strings.NewReplacer(":", "-", ".", "-").Replace(img), time.Now().UnixNano())
			out, err := exec.Command(docker, "run", "-d", "--rm", "--name", cname, "-p", "127.0.0.1:"+p+":80", ref).CombinedOutput()
			if err != nil {
				t.Fatalf("docker run %s: %v\n%s", ref, err, out)
			}
			t.Cleanup(func() { exec.Command(docker, "rm", "-f", cname).Run() })
			testenv.WaitHTTP(t, "http://"+port+"/", 20*time.Second)
			resp, err := http.Get("http://" + port + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), text) {
				t.Fatalf("GET / on %s = %d %q, want 200 and %q", img, resp.StatusCode, body, text)
			}
			if img == "samsung:1.0" && strings.Contains(string(body), "New Galaxy") {
				t.Fatalf("samsung:1.0 serves the 2.0 page")
			}
		})
	}

	// labreg build of the same directories again: same digests, no blob
	// uploaded. (make up leaves images/labreg out: it recompiles labreg.)
	again := exec.Command(filepath.Join(clone, "bin", "labreg"), "build", "--progress", "plain", "images/webserver", "images/myhttpd", "images/samsung")
	again.Dir, again.Env = clone, env
	var aout, aerr bytes.Buffer
	again.Stdout, again.Stderr = &aout, &aerr
	if err := again.Run(); err != nil {
		t.Fatalf("labreg build images/ again: %v\n%s", err, aerr.String())
	}
	lines := strings.Split(strings.TrimSpace(aout.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("second build printed %d lines, want 5: %q", len(lines), aout.String())
	}
	for _, l := range lines {
		ref, dg, _ := strings.Cut(l, "@")
		if img := strings.TrimPrefix(ref, reg+"/"); digests[img] != dg {
			t.Errorf("second build of %s: %s, first %s", img, dg, digests[img])
		}
	}
	if n := strings.Count(aerr.String(), "(0 blobs uploaded)"); n != 5 {
		t.Errorf("second build: %d of 5 images uploaded nothing:\n%s", n, aerr.String())
	}
}
