package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/internal/units"
)

func TestLsAndGC(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // serve's state stays this test's
	dir := t.TempDir()
	reg, web := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data", dir, "--listen", reg, "--ui-listen", web, "--advertise", reg},
			streams{In: strings.NewReader(""), Out: &out, Err: &bytes.Buffer{}})
	}()
	t.Cleanup(func() { cancel(); <-done })
	testenv.WaitHTTP(t, "http://"+web+"/api/status", 10*time.Second)
	if !strings.Contains(out.String(), "web UI on http://"+web) {
		t.Errorf("serve does not say where the UI listens: %q", out.String())
	}

	a, _ := random.Image(3000, 2)
	b, _ := random.Image(4000, 1)
	testenv.Push(t, reg+"/team/app:1.9", a)
	testenv.Push(t, reg+"/team/app:1.10", b)
	testenv.Push(t, reg+"/team/app:latest", b)
	testenv.Push(t, reg+"/team/db:15", a)

	code, stdout, stderr := runCLI(t, "ls", "--ui-listen", web)
	if code != 0 {
		t.Fatalf("ls: %d %s", code, stderr)
	}
	want := regexp.MustCompile(`(?s)REPOSITORY\s+TAGS\s+SIZE\s+LAST PUSH\n.*team/app\s+3\s+.*team/db\s+1\s`)
	if !want.MatchString(stdout) {
		t.Errorf("ls prints:\n%s", stdout)
	}
	code, stdout, stderr = runCLI(t, "ls", "team/app", "--ui-listen", web)
	if code != 0 {
		t.Fatalf("ls team/app: %d %s", code, stderr)
	}
	bd, _ := b.Digest()
	want = regexp.MustCompile(`(?s)TAG\s+DIGEST.*\n1\.9\s.*\n1\.10\s+` + bd.Hex[:12] + `.*\nlatest \(=\)\s+` + bd.Hex[:12])
	if !want.MatchString(stdout) {
		t.Errorf("ls team/app prints (want 1.9 < 1.10, latest grouped with 1.10):\n%s", stdout)
	}

	// Remove 1.10 and latest's image; gc frees its blobs (a is still used).
	req, _ := http.NewRequest("DELETE", "http://"+reg+"/v2/team/app/manifests/"+bd.String(), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 202 {
		t.Fatalf("deleting manifest: %v %v", resp, err)
	}
	m, _ := b.Manifest()
	raw, _ := b.RawManifest()
	bytesWant := m.Config.Size + m.Layers[0].Size + int64(len(raw))
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"gc", "--dry-run", "--ui-listen", web}, fmt.Sprintf("would remove 3 blobs (%s, %d bytes)", units.HumanSize(bytesWant), bytesWant)},
		{[]string{"gc", "--ui-listen", web}, fmt.Sprintf("removed 3 blobs (%s, %d bytes)", units.HumanSize(bytesWant), bytesWant)},
		{[]string{"gc", "--ui-listen", web}, "removed 0 blobs"},
	} {
		code, stdout, stderr = runCLI(t, tc.args...)
		if code != 0 || !strings.Contains(stdout, tc.out) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tc.args, code, stdout, stderr, tc.out)
		}
	}
	// Offline gc while the server runs: the server refuses pushes meanwhile.
	code, stdout, stderr = runCLI(t, "gc", "--offline", "--data", dir)
	if code != 0 || !strings.Contains(stdout, "removed 0 blobs") {
		t.Errorf("offline gc beside a running server: exit %d, %q %q", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "ls", "--ui-url", "http://"+freeAddr(t))
	if code != 1 || !strings.Contains(stderr, "no labreg UI answers") {
		t.Errorf("ls with nothing listening: exit %d, %q", code, stderr)
	}
	// The server stops; gc works on the data dir.
	cancel()
	<-done
	done <- 0
	http.DefaultClient.CloseIdleConnections() // as a new gc process would start without them
	code, stdout, stderr = runCLI(t, "gc", "--ui-listen", web, "--data", dir)
	if code != 0 || !strings.Contains(stderr, "collecting offline") || !strings.Contains(stdout, "removed 0 blobs") {
		t.Errorf("gc without a server: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
