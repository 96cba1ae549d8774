package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestGCNoOfflineFallbackBesideServer: gc falls back to an offline GC only
// when the UI's address refuses the connection and no server has the data
// dir open. A TLS failure (something listens) is an error, and so is a
// refused connection while a server runs on the data dir without a UI
// there: neither collects offline.
func TestGCNoOfflineFallbackBesideServer(t *testing.T) {
	dir := t.TempDir()
	testenv.Registry(t, registry.Options{DataDir: dir})
	events := func() string { b, _ := os.ReadFile(filepath.Join(dir, "events.jsonl")); return string(b) }

	// A UI address that answers with TLS the client does not trust.
	tlsUI := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(tlsUI.Close)
	code, stdout, stderr := runCLI(t, "gc", "--ui-url", tlsUI.URL, "--data", dir)
	if code != 1 || strings.Contains(stderr, "collecting offline") || strings.Contains(stdout, "removed") {
		t.Errorf("gc with a TLS failure: exit %d, stdout %q, stderr %q; want exit 1 and no offline GC", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "certificate") {
		t.Errorf("gc with a TLS failure does not say so: %q", stderr)
	}

	// Nothing listens at the UI address, but a server uses the data dir.
	code, stdout, stderr = runCLI(t, "gc", "--ui-url", "http://"+freeAddr(t), "--data", dir)
	if code != 1 || strings.Contains(stdout, "removed") || !strings.Contains(stderr, "a labreg server is running on "+dir) {
		t.Errorf("gc with no UI beside a running server: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if strings.Contains(events(), `"gc"`) {
		t.Errorf("an offline GC ran beside a running server: events %s", events())
	}
	// A cancelled context is not "no server" either.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb testenv.Buffer
	code = run(ctx, []string{"gc", "--ui-url", tlsUI.URL, "--data", dir}, streams{In: strings.NewReader(""), Out: &out, Err: &errb})
	if code != 1 || strings.Contains(errb.String(), "collecting offline") {
		t.Errorf("gc with a cancelled context: exit %d, stderr %q", code, errb.String())
	}
}
