package registry_test

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labreg/labreg/internal/testenv"
)

// TestS3RedirectDockerPull is #11's acceptance 6 with the real Docker
// Engine: with redirect=true, labreg answers the engine's blob GETs with
// 307 to a presigned URL of the store, the engine follows them and pulls
// and runs the image (its bytes came from the object store).
func TestS3RedirectDockerPull(t *testing.T) {
	docker := testenv.Docker(t)
	store, bucket := testenv.S3(t)
	opts := s3Replica(t, store, bucket, writeSecret(t, strings.Repeat("d", 64)))
	opts.Storage += "&redirect=true"
	addr, _ := testenv.Registry(t, opts)

	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	msg := "pulled through a redirect " + id
	repo := addr + "/lab/redirect-" + id
	img := testenv.BusyboxImage(t, nil, func(c *v1.Config) { c.Cmd = []string{"/bin/busybox", "echo", msg} })
	testenv.Push(t, repo+":v1", img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref := repo + "@" + d.String()
	t.Cleanup(func() { exec.Command(docker, "rmi", "-f", ref).Run() })

	before := redirects(t, addr)
	if out, err := exec.Command(docker, "pull", ref).CombinedOutput(); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
	}
	// The config at least (it holds this run's message, so the engine
	// cannot have it; busybox's layer it may already have from another
	// test): a blob GET the engine made, got 307 for, and followed.
	if got := redirects(t, addr) - before; got < 1 {
		t.Errorf("labreg answered %d blob GETs with 307 during the pull, want at least 1 (the config)", got)
	}
	out, err := exec.Command(docker, "run", "--rm", ref).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != msg {
		t.Errorf("docker run %s: %v, printed %q; want %q", ref, err, out, msg)
	}
}

// redirects reads labreg's count of GET requests answered 307 from its
// /metrics.
func redirects(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^labreg_http_requests_total\{code="307",method="GET"\} (\d+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
