package registry_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestClientErrorsNotLoggedAsErrors (#13 What/4): the expected 404 of
// every existence check (docker push, labreg build) is not an ERROR in
// the server's log; distribution's "response completed with error" for a
// client's 4xx is at debug.
func TestClientErrorsNotLoggedAsErrors(t *testing.T) {
	var buf testenv.Buffer
	addr, _ := testenv.Registry(t, registry.Options{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	for _, p := range []string{"/v2/nothere/manifests/1", "/v2/nothere/blobs/sha256:" + strings.Repeat("0", 64)} {
		resp, err := http.Head("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("HEAD %s: %d, want 404", p, resp.StatusCode)
		}
	}
	if strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("a client's 404 is logged as an error:\n%s", buf.String())
	}
}
