package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/docker/cli/cli/config/configfile"
	clitypes "github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/build"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// pushBusybox pushes a runnable busybox image (testenv.BusyboxImage,
// Cmd ["sh"]) to reg as busybox:test and returns its reference.
func pushBusybox(t testing.TB, reg string, opts ...remote.Option) string {
	t.Helper()
	ref := reg + "/busybox:test"
	testenv.Push(t, ref, testenv.BusyboxImage(t, nil, func(c *v1.Config) { c.Cmd = []string{"sh"} }), opts...)
	return ref
}

// openWithBase opens a BuildKit with open (closed when the test ends),
// starts a registry and pushes the busybox base to it; it returns the
// BuildKit, the registry's HOST:PORT and the base's reference.
func openWithBase(t *testing.T, open func(*testing.T, io.Writer, ...build.BuildKitOption) *build.BuildKit, progress io.Writer) (*build.BuildKit, string, string) {
	t.Helper()
	bk := open(t, progress)
	reg, _ := testenv.Registry(t, registry.Options{})
	return bk, reg, pushBusybox(t, reg)
}

// assertNoTags fails the test when repo (HOST:PORT/NAME) has tags: what
// (a build that should not push) pushed.
func assertNoTags(t *testing.T, repo, what string) {
	t.Helper()
	r, err := name.NewRepository(repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if tags, err := remote.List(r); err == nil && len(tags) > 0 {
		t.Errorf("%s pushed tags %v", what, tags)
	}
}

// imageFile returns the content of path in img's flattened filesystem.
func imageFile(t *testing.T, img v1.Image, path string) (string, bool) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", false
		}
		if err != nil {
			t.Fatalf("reading image filesystem: %v", err)
		}
		if strings.TrimPrefix(h.Name, "/") == path {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b), true
		}
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// removeFromEngine deletes ref from the Docker Engine's image store when
// the test ends: the Docker Engine path leaves what it built there, as
// docker build does.
func removeFromEngine(t *testing.T, engine, ref string) {
	t.Helper()
	if engine != "docker-engine" {
		return
	}
	t.Cleanup(func() { exec.Command("docker", "image", "rm", "-f", ref).Run() })
}

// imageDir writes a build context with the given Dockerfile.
func imageDir(t *testing.T, dockerfile string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "greeting.txt"), []byte("from the context\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildkitPublish plans tg and has bk build it and publish it to to.
func buildkitPublish(ctx context.Context, bk *build.BuildKit, tg build.Target, to build.Publisher) (build.Result, error) {
	p, err := build.NewPlan(ctx, tg, nil)
	if err != nil {
		return build.Result{}, err
	}
	return bk.BuildAndPublish(ctx, p, to)
}

// engines are the two ways to reach BuildKit, each closed when the test
// ends and skipped (or failed under LABREG_E2E=1) when its daemon is
// missing.
var engines = []struct {
	name string
	open func(t *testing.T, progress io.Writer, opts ...build.BuildKitOption) *build.BuildKit
}{
	{"buildkitd", func(t *testing.T, progress io.Writer, opts ...build.BuildKitOption) *build.BuildKit {
		addr := testenv.Buildkit(t)
		bk, err := build.NewBuildKit(context.Background(), addr, progress, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bk.Close() })
		if strings.HasPrefix(bk.Addr(), build.DockerAddr) {
			t.Fatalf("NewBuildKit(%q) fell back to %s", addr, bk.Addr())
		}
		return bk
	}},
	{"docker-engine", func(t *testing.T, progress io.Writer, opts ...build.BuildKitOption) *build.BuildKit {
		testenv.Docker(t)
		bk, err := build.NewDockerBuildKit(context.Background(), progress, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bk.Close() })
		return bk
	}},
}

func TestBuildKitRun(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			var progress bytes.Buffer
			bk, reg, base := openWithBase(t, e.open, &progress)

			ctx := context.Background()
			dir := imageDir(t, "FROM "+base+"\n"+
				"ARG WHO=nobody\n"+
				"COPY greeting.txt /greeting.txt\n"+
				"RUN echo \"hello $WHO\" > /hello.txt && cat /greeting.txt >> /hello.txt\n"+
				"COPY . /ctx/\n")
			writeFile(t, filepath.Join(dir, "secret.txt"), "not for the image\n")
			writeFile(t, filepath.Join(dir, ".dockerignore"), "secret.txt\n")
			ref := reg + "/runs/hello:1.0"
			removeFromEngine(t, e.name, ref)
			res, err := buildkitPublish(ctx, bk, build.Target{
				Context: dir, Ref: ref, Insecure: true,
				BuildArgs: map[string]string{"WHO": "labreg"},
			}, &build.Registry{})
			if err != nil {
				t.Fatalf("Build: %v\nprogress:\n%s", err, progress.String())
			}
			if !strings.HasPrefix(res.Digest, "sha256:") || res.Ref != ref {
				t.Fatalf("Result = %+v, want Ref %s and a sha256 digest", res, ref)
			}
			if !strings.Contains(progress.String(), "RUN echo") {
				t.Errorf("progress does not show the RUN step:\n%s", progress.String())
			}

			// The registry serves the digest Build reported, and the
			// image holds what RUN wrote.
			dref, err := name.NewDigest(reg+"/runs/hello@"+res.Digest, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(dref)
			if err != nil {
				t.Fatalf("pulling the built image by its digest: %v", err)
			}
			got, ok := imageFile(t, img, "hello.txt")
			if want := "hello labreg\nfrom the context\n"; !ok || got != want {
				t.Errorf("/hello.txt in the image = %q (found %v), want %q", got, ok, want)
			}
			if _, ok := imageFile(t, img, "ctx/greeting.txt"); !ok {
				t.Error("COPY . did not copy greeting.txt")
			}
			if _, ok := imageFile(t, img, "ctx/secret.txt"); ok {
				t.Error("COPY . copied secret.txt, which .dockerignore excludes")
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Architecture != runtime.GOARCH || cf.OS != "linux" {
				t.Errorf("image platform = %s/%s", cf.OS, cf.Architecture)
			}
			tagged, err := name.NewTag(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			desc, err := remote.Head(tagged)
			if err != nil {
				t.Fatalf("HEAD %s: %v", ref, err)
			}
			if desc.Digest.String() != res.Digest {
				t.Errorf("tag %s points at %s, Build reported %s", ref, desc.Digest, res.Digest)
			}
		})
	}
}

func TestBuildKitErrors(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			bk, reg, base := openWithBase(t, e.open, io.Discard)

			tests := []struct {
				name       string
				dockerfile string
				line       int    // 0: the error is not located in the Dockerfile
				want       string // in the error message
			}{
				{"failing RUN", "FROM " + base + "\nRUN echo ok\nRUN echo boom && exit 3\n", 3, "exit code: 3"},
				{"failing RUN over two lines", "FROM " + base + "\n# a comment\nRUN echo two && \\\n    exit 5\n", 3, "exit code: 5"},
				{"missing command", "FROM " + base + "\n\nRUN no-such-command\n", 3, "exit code: 127"},
				{"missing base", "FROM " + reg + "/nothing:here\nRUN true\n", 1, "nothing:here"},
				{"missing base from ARG", "ARG REG=" + reg + "\nARG NAME=nothing\n\nFROM ${REG}/$NAME:there\nRUN true\n", 4, "nothing:there"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					dir := imageDir(t, tc.dockerfile)
					repo := reg + "/broken/" + strings.ReplaceAll(strings.ToLower(tc.name), " ", "-")
					removeFromEngine(t, e.name, repo+":1")
					_, err := buildkitPublish(context.Background(), bk, build.Target{
						Context: dir, Ref: repo + ":1", Insecure: true,
					}, &build.Registry{})
					if err == nil {
						t.Fatal("Build succeeded, want an error")
					}
					t.Logf("error: %v", err)
					var de *build.DockerfileError
					if !errors.As(err, &de) {
						t.Fatalf("error %q is not a *build.DockerfileError", err)
					}
					wantPrefix := filepath.Join(dir, "Dockerfile") + ":"
					if de.Line != tc.line || !strings.HasPrefix(err.Error(), wantPrefix) {
						t.Errorf("error %q: line %d, want %s%d", err, de.Line, wantPrefix, tc.line)
					}
					if !strings.Contains(err.Error(), tc.want) {
						t.Errorf("error %q does not say %q", err, tc.want)
					}
					if strings.Contains(err.Error(), "rpc error") {
						t.Errorf("error %q carries gRPC noise", err)
					}
					// Nothing was pushed.
					assertNoTags(t, repo, "failed build")
				})
			}
		})
	}
}

func TestBuildKitLayout(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			bk, reg, base := openWithBase(t, e.open, io.Discard)
			dir := imageDir(t, "FROM "+base+"\nRUN echo offline > /note.txt\n")
			out := filepath.Join(t.TempDir(), "oci")
			ref := reg + "/layout/note:1"
			removeFromEngine(t, e.name, ref)
			res, err := buildkitPublish(context.Background(), bk, build.Target{Context: dir, Ref: ref}, &build.Layout{Dir: out})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			p, err := layout.FromPath(out)
			if err != nil {
				t.Fatalf("no OCI layout at %s: %v", out, err)
			}
			h, err := v1.NewHash(res.Digest)
			if err != nil {
				t.Fatalf("Result digest %q: %v", res.Digest, err)
			}
			img, err := p.Image(h)
			if err != nil {
				t.Fatalf("layout has no image %s: %v", res.Digest, err)
			}
			if got, ok := imageFile(t, img, "note.txt"); !ok || got != "offline\n" {
				t.Errorf("/note.txt = %q (found %v), want %q", got, ok, "offline\n")
			}
			assertNoTags(t, reg+"/layout/note", "a no-push build")
		})
	}
}

// TestBuildKitAuth builds on a registry with htpasswd auth: BuildKit pulls
// the base and pushes the result with the credentials of the docker
// config, and fails clearly without them.
func TestBuildKitAuth(t *testing.T) {
	const user, pass = "lab", "s3cret-pass"
	htpasswd := testenv.Htpasswd(t, user, pass)
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			reg, _ := testenv.Registry(t, registry.Options{Htpasswd: htpasswd})
			base := pushBusybox(t, reg, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
			dir := imageDir(t, "FROM "+base+"\nRUN echo authed > /auth.txt\n")

			cfg := configfile.New(filepath.Join(t.TempDir(), "config.json"))
			cfg.AuthConfigs[reg] = clitypes.AuthConfig{Username: user, Password: pass, ServerAddress: reg}
			bk := e.open(t, io.Discard, build.WithDockerConfig(cfg))
			ref := reg + "/private/app:1"
			removeFromEngine(t, e.name, ref)
			removeFromEngine(t, e.name, reg+"/private/anon:1")
			res, err := buildkitPublish(context.Background(), bk, build.Target{Context: dir, Ref: ref, Insecure: true}, &build.Registry{})
			if err != nil {
				t.Fatalf("Build with credentials: %v", err)
			}
			dref, err := name.NewDigest(reg+"/private/app@"+res.Digest, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(dref, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
			if err != nil {
				t.Fatalf("pulling the built image: %v", err)
			}
			if got, ok := imageFile(t, img, "auth.txt"); !ok || got != "authed\n" {
				t.Errorf("/auth.txt = %q (found %v)", got, ok)
			}

			anon := e.open(t, io.Discard, build.WithDockerConfig(configfile.New(filepath.Join(t.TempDir(), "config.json"))))
			_, err = buildkitPublish(context.Background(), anon, build.Target{Context: dir, Ref: reg + "/private/anon:1", Insecure: true}, &build.Registry{})
			if err == nil {
				t.Fatal("Build without credentials succeeded on a registry with auth")
			}
			t.Logf("error without credentials: %v", err)
			if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "401") && !strings.Contains(msg, "unauthorized") {
				t.Errorf("error %q does not say authorization failed", err)
			}
			var de *build.DockerfileError
			if !errors.As(err, &de) || de.Line != 1 || de.Instruction != "FROM" {
				t.Errorf("error %q is not located at the Dockerfile's FROM (line 1)", err)
			}
		})
	}
}

// TestBuildKitLayoutArchive writes the OCI layout as a tar archive (a
// buildkitd feature; the Docker Engine path refuses it by name).
func TestBuildKitLayoutArchive(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			bk, reg, base := openWithBase(t, e.open, io.Discard)
			dir := imageDir(t, "FROM "+base+"\nRUN echo archived > /note.txt\n")
			out := filepath.Join(t.TempDir(), "image.tar")
			ref := reg + "/layout/archive:1"
			removeFromEngine(t, e.name, ref)
			res, err := buildkitPublish(context.Background(), bk, build.Target{Context: dir, Ref: ref}, &build.Layout{Dir: out})
			if e.name == "docker-engine" {
				if err == nil || !strings.Contains(err.Error(), out) {
					t.Fatalf("Build to %s through the Docker Engine: error %v, want one naming the archive", out, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			// Unpack the archive and read it as an OCI layout.
			unpacked := t.TempDir()
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			tr := tar.NewReader(f)
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("reading %s: %v", out, err)
				}
				if h.Typeflag != tar.TypeReg {
					continue
				}
				p := filepath.Join(unpacked, filepath.FromSlash(h.Name))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, p, string(b))
			}
			p, err := layout.FromPath(unpacked)
			if err != nil {
				t.Fatalf("%s is not an OCI layout archive: %v", out, err)
			}
			h, err := v1.NewHash(res.Digest)
			if err != nil {
				t.Fatal(err)
			}
			img, err := p.Image(h)
			if err != nil {
				t.Fatalf("archive has no image %s: %v", res.Digest, err)
			}
			if got, ok := imageFile(t, img, "note.txt"); !ok || got != "archived\n" {
				t.Errorf("/note.txt = %q (found %v)", got, ok)
			}
		})
	}
}

// TestNewBuildKitAddress checks which BuildKit NewBuildKit reaches: the
// Docker Engine's when no buildkitd answers (saying so on progress), and
// an error naming both when neither answers. Not parallel: it sets
// DOCKER_HOST.
func TestNewBuildKitAddress(t *testing.T) {
	testenv.Docker(t)
	ctx := context.Background()
	missing := "unix://" + filepath.Join(t.TempDir(), "no-buildkitd.sock")

	t.Run("falls back to the Docker Engine", func(t *testing.T) {
		var progress bytes.Buffer
		bk, err := build.NewBuildKit(ctx, missing, &progress)
		if err != nil {
			t.Fatalf("NewBuildKit(%s): %v", missing, err)
		}
		defer bk.Close()
		if !strings.HasPrefix(bk.Addr(), build.DockerAddr) {
			t.Errorf("Addr() = %q, want the Docker Engine", bk.Addr())
		}
		if !strings.Contains(progress.String(), missing) || !strings.Contains(progress.String(), "Docker Engine") {
			t.Errorf("progress does not say buildkitd at %s was skipped for the Docker Engine: %q", missing, progress.String())
		}
	})
	t.Run("docker selects the Docker Engine", func(t *testing.T) {
		var progress bytes.Buffer
		bk, err := build.NewBuildKit(ctx, build.DockerAddr, &progress)
		if err != nil {
			t.Fatal(err)
		}
		defer bk.Close()
		if !strings.HasPrefix(bk.Addr(), build.DockerAddr) || progress.Len() != 0 {
			t.Errorf("Addr() = %q, progress %q; want the Docker Engine, silently", bk.Addr(), progress.String())
		}
	})
	t.Run("neither answers", func(t *testing.T) {
		noDocker := "unix://" + filepath.Join(t.TempDir(), "no-docker.sock")
		t.Setenv("DOCKER_HOST", noDocker)
		_, err := build.NewBuildKit(ctx, missing, io.Discard)
		if err == nil {
			t.Fatal("NewBuildKit succeeded with no buildkitd and no Docker Engine")
		}
		t.Logf("error: %v", err)
		for _, want := range []string{missing, strings.TrimPrefix(noDocker, "unix://")} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
	})
}
