package build_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/build"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// BenchmarkBuildKitRebuild measures a no-change rebuild + push of a
// Dockerfile with RUN, whole process each time: `labreg build --engine
// buildkit` on buildkitd and on the Docker Engine, against the baseline
// `buildctl build` with the same context and output on the same buildkitd.
func BenchmarkBuildKitRebuild(b *testing.B) {
	addr := testenv.Buildkit(b)
	buildctl := testenv.Tool(b, "buildctl", "built with buildkitd by .ci/run")
	labreg := testenv.BuildLabreg(b)
	reg, _ := testenv.Registry(b, registry.Options{})
	base := pushBusybox(b, reg)
	dir := b.TempDir()
	writeFile(b, filepath.Join(dir, "Dockerfile"), "FROM "+base+"\nRUN echo bench > /bench.txt\n")

	cases := []struct {
		name string
		args func(ref string) []string
	}{
		{"buildctl", func(ref string) []string {
			return []string{buildctl, "--addr", addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
				"--local", "context=" + dir, "--local", "dockerfile=" + dir,
				"--output", "type=image,name=" + ref + ",push=true,registry.insecure=true"}
		}},
		{"labreg-buildkitd", func(ref string) []string {
			return []string{labreg, "build", "--engine", "buildkit", "--buildkit-addr", addr, "--registry", reg, "-t", strings.TrimPrefix(ref, reg+"/"), dir}
		}},
		{"labreg-docker-engine", func(ref string) []string {
			return []string{labreg, "build", "--engine", "buildkit", "--buildkit-addr", build.DockerAddr, "--registry", reg, "-t", strings.TrimPrefix(ref, reg+"/"), dir}
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ref := reg + "/bench/" + c.name + ":1"
			if c.name == "labreg-docker-engine" {
				testenv.Docker(b)
				b.Cleanup(func() { exec.Command("docker", "image", "rm", "-f", ref).Run() })
			}
			run := func() {
				cmd := exec.Command(c.args(ref)[0], c.args(ref)[1:]...)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %v\n%s", cmd.Args, err, out)
				}
			}
			run() // warm the cache: what is measured is a no-change rebuild
			b.ResetTimer()
			for b.Loop() {
				run()
			}
		})
	}
}

// TestBuildKitCLI runs the whole `labreg build` process on an image tree
// whose Dockerfiles RUN: --engine auto picks BuildKit, stdout carries
// exactly one REF@DIGEST line per image, and a failing RUN exits non-zero
// with FILE:LINE on stderr and pushes nothing. --progress plain asks for
// BuildKit's progress although stderr is not a terminal.
func TestBuildKitCLI(t *testing.T) {
	labreg := testenv.BuildLabreg(t)
	cases := []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"buildkitd", func(t *testing.T) string { return testenv.Buildkit(t) }},
		{"docker-engine", func(t *testing.T) string { testenv.Docker(t); return build.DockerAddr }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			addr := c.addr(t)
			reg, _ := testenv.Registry(t, registry.Options{})
			pushBusybox(t, reg)
			root := t.TempDir()
			for dir, df := range map[string]string{
				"images/hello/1.0":  "ARG REGISTRY\nFROM ${REGISTRY}/busybox:test\nRUN echo cli > /cli.txt\n",
				"images/broken/1.0": "ARG REGISTRY\nFROM ${REGISTRY}/busybox:test\n\nRUN echo no && false\n",
			} {
				if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(root, dir, "Dockerfile"), df)
			}
			removeFromEngine(t, c.name, reg+"/hello:1.0")
			removeFromEngine(t, c.name, reg+"/broken:1.0")
			run := func(dir string) (string, string, error) {
				cmd := exec.Command(labreg, "build", "--progress", "plain", "--registry", reg, "--buildkit-addr", addr, dir)
				cmd.Dir = root
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				return stdout.String(), stderr.String(), err
			}

			stdout, stderr, err := run("images/hello")
			if err != nil {
				t.Fatalf("labreg build images/hello: %v\n%s", err, stderr)
			}
			line := strings.TrimSuffix(stdout, "\n")
			ref, dgst, ok := strings.Cut(line, "@")
			if !ok || strings.Contains(line, "\n") || ref != reg+"/hello:1.0" || !strings.HasPrefix(dgst, "sha256:") {
				t.Fatalf("stdout = %q, want one line %s/hello:1.0@sha256:…", stdout, reg)
			}
			if !strings.Contains(stderr, "RUN echo cli") {
				t.Errorf("stderr does not show BuildKit's progress:\n%s", stderr)
			}
			dref, err := name.NewDigest(reg+"/hello@"+dgst, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(dref)
			if err != nil {
				t.Fatalf("pulling %s: %v", dref, err)
			}
			if got, ok := imageFile(t, img, "cli.txt"); !ok || got != "cli\n" {
				t.Errorf("/cli.txt = %q (found %v), want %q", got, ok, "cli\n")
			}

			stdout, stderr, err = run("images/broken")
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("labreg build images/broken: %v, want a non-zero exit", err)
			}
			if stdout != "" {
				t.Errorf("failed build printed %q on stdout", stdout)
			}
			if want := filepath.Join("images", "broken", "1.0", "Dockerfile") + ":4: RUN"; !strings.Contains(stderr, want) {
				t.Errorf("stderr does not name %s:\n%s", want, stderr)
			}
			assertNoTags(t, reg+"/broken", "failed build")
		})
	}
}
