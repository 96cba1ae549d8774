package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestPushLayout: an image that `labreg build --no-push` wrote to an OCI
// layout (never pushed, not in the engine) is deployed by its short name:
// deploy pushes it from the layout, pins its digest and the service serves it.
func TestPushLayout(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	repo := "layout-" + id
	page := "from the layout " + id + "\n"
	bb, err := os.ReadFile("/bin/busybox")
	testenv.Require(t, "busybox-static", err == nil, "no /bin/busybox (apt-get install busybox-static)")
	src := filepath.Join(t.TempDir(), "images", repo, "v1")
	testenv.WriteFiles(t, src, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n" +
			`ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"]` + "\n",
		"www/index.html": page,
	})
	if err := os.WriteFile(filepath.Join(src, "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(t.TempDir(), "oci-layout")
	b := labreg(t, nil, "build", "--no-push", "--layout", lay, "--registry", reg, "--engine", "native", "--progress", "plain", src)
	if b.code != 0 {
		t.Fatalf("labreg build --no-push: exit %d", b.code)
	}
	built := strings.TrimSpace(b.out) // REG/REPO:v1@sha256:…
	_, digest, ok := strings.Cut(built, "@")
	if !ok {
		t.Fatalf("build printed %q, want REF@DIGEST", built)
	}
	ref, err := name.NewTag(reg+"/"+repo+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(ref); err == nil {
		t.Fatalf("%s is in the registry before the deploy", ref)
	}

	svc := "lay-" + id
	removeService(t, docker, svc)
	port := freePort(t)
	r := labreg(t, []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}, "deploy", svc, "--image", repo+":v1",
		"--advertise", reg, "--layout", lay, "--progress", "plain", "--constraint", onManager(t, docker),
		"--publish", fmt.Sprintf("mode=host,%d:80", port))
	if r.code != 0 {
		t.Fatalf("deploy of an image only in an OCI layout: exit %d", r.code)
	}
	if !strings.Contains(r.err, "from OCI layout "+lay) {
		t.Errorf("progress does not say that the image was pushed from the layout %s", lay)
	}
	d, err := remote.Head(ref)
	if err != nil {
		t.Fatalf("%s is not in the registry after the deploy: %v", ref, err)
	}
	if d.Digest.String() != digest {
		t.Errorf("registry has %s at %s, the layout had %s", ref, d.Digest, digest)
	}
	if want := svc + "\t" + reg + "/" + repo + ":v1@" + digest + "\t1 tasks running"; strings.TrimSpace(r.out) != want {
		t.Errorf("stdout = %q, want %q", r.out, want)
	}
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != page {
		t.Errorf("GET = %q, want %q", got, page)
	}
}
