package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestLabregImage builds labreg's own image (images/labreg) from a copy of
// this repository with the native engine into a test registry, then runs
// it with the Docker Engine: it is labreg, on nothing else, and answers
// `labreg version`.
func TestLabregImage(t *testing.T) {
	docker := testenv.Docker(t)
	addr, _ := testenv.Registry(t, registry.Options{})
	t.Chdir(freshClone(t))
	code, out, errs := runCLI(t, "build", "--engine", "native", "--registry", addr, "images/labreg")
	if code != 0 {
		t.Fatalf("labreg build images/labreg: exit %d\n%s", code, errs)
	}
	ref := strings.TrimSpace(out)
	if m := imageLine.FindStringSubmatch(ref); m == nil || m[1] != addr+"/labreg:1" {
		t.Fatalf("labreg build printed %q, want %s/labreg:1@sha256:<digest>", out, addr)
	}

	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || strings.Join(cfg.Config.Entrypoint, " ") != "/usr/local/bin/labreg" || strings.Join(cfg.Config.Cmd, " ") != "serve" {
		t.Errorf("image has %d layers, entrypoint %q, cmd %q; want one layer (FROM scratch), labreg, serve",
			len(layers), cfg.Config.Entrypoint, cfg.Config.Cmd)
	}

	t.Cleanup(func() { exec.Command(docker, "rmi", "-f", ref).Run() })
	run, err := exec.Command(docker, "run", "--rm", "--network", "none", ref, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("docker run %s version: %v\n%s", ref, err, run)
	}
	if v := strings.TrimSpace(string(run)); !strings.HasPrefix(v, "labreg ") || !strings.HasSuffix(v, " linux/"+cfg.Architecture) {
		t.Errorf("the image's `labreg version` printed %q, want \"labreg <version> <go> linux/%s\"", v, cfg.Architecture)
	}
}
