package registry_test

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestDockerPushPullRun has the real Docker Engine push an image to an
// in-process labreg registry on 127.0.0.1, forget it, pull it back and run it.
func TestDockerPushPullRun(t *testing.T) {
	docker := testenv.Docker(t)
	addr, _ := testenv.Registry(t, registry.Options{})

	suffix := make([]byte, 4)
	rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	msg := "hello from labreg " + id
	ref, err := name.NewTag(addr + "/labreg-test/busybox-" + id + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	img := testenv.BusyboxImage(t, nil, func(c *v1.Config) { c.Cmd = []string{"/bin/busybox", "echo", msg} })
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (string, error) {
		out, err := exec.Command(docker, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	t.Cleanup(func() { run("rmi", "-f", ref.String()) })

	must("load", "-i", tarPath)
	must("push", ref.String())

	// The registry holds what docker pushed: the manifest resolves and
	// every blob it names is there.
	pushed, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("reading the pushed image back from labreg: %v", err)
	}
	layers, err := pushed.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("pushed image has %d layers (%v), want 1", len(layers), err)
	}
	if _, err := remote.Layer(ref.Context().Digest(mustDigest(t, layers[0]).String())); err != nil {
		t.Fatalf("layer blob of the pushed image: %v", err)
	}

	must("rmi", ref.String())
	if out, err := run("image", "inspect", ref.String()); err == nil {
		t.Fatalf("image still present after docker rmi: %s", out)
	}
	must("pull", ref.String())
	repoDigests := must("image", "inspect", "--format", "{{join .RepoDigests \" \"}}", ref.String())
	d, err := pushed.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(repoDigests, d.String()) {
		t.Errorf("pulled image's repo digests %q do not include the registry's manifest digest %s", repoDigests, d)
	}
	if out := must("run", "--rm", "--network", "none", ref.String()); out != msg {
		t.Errorf("docker run printed %q, want %q", out, msg)
	}
}

func mustDigest(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
