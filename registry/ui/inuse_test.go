package ui

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestDeleteInUse: deleting a manifest a swarm service uses (Options.InUse;
// the real swarm query is tested in cmd/labreg TestGCKeepsWhatSwarmUses)
// says which service and needs in_use=confirm; a GC removing untagged
// manifests is refused when the swarm cannot be asked, and a dry run says
// it could not check.
func TestDeleteInUse(t *testing.T) {
	addr, srv := testenv.Registry(t, registry.Options{})
	used := testenv.Push(t, addr+"/app:blue", image(t, "amd64", time.Now(), nil, 10)).String()
	var inUseErr error
	u, err := New(Options{Catalog: srv.Catalog(), History: srv.Events(), GC: srv,
		InUse: func(context.Context) (map[digest.Digest]string, error) {
			return map[digest.Digest]string{digest.Digest(used): "used by service web (current spec, 1 task)"}, inUseErr
		}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(u)
	t.Cleanup(hs.Close)
	do := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := do("GET", "/r/app/-/delete-manifest/"+used, "")
	if code != 200 || !strings.Contains(body, `id="in-use"`) || !strings.Contains(body, "used by service web") || !strings.Contains(body, `name="in_use"`) {
		t.Errorf("confirm page: %d; want it to say service web uses the image and ask for a confirmation:\n%s", code, body)
	}
	code, body = do("DELETE", "/api/repositories/app/-/manifests/"+used, "")
	if code != http.StatusConflict || !strings.Contains(body, "used by service web") {
		t.Errorf("API delete of a manifest in use: %d %s; want 409 naming service web", code, body)
	}
	if _, err := srv.Catalog().Resolve(context.Background(), "app", "blue"); err != nil {
		t.Errorf("the refused delete removed the tag: %v", err)
	}
	code, body = do("DELETE", "/api/repositories/app/-/manifests/"+used+"?in_use=confirm", "")
	if code != 200 {
		t.Errorf("confirmed API delete: %d %s", code, body)
	}

	inUseErr = errors.New("engine unreachable")
	code, body = do("POST", "/api/gc", `{"remove_untagged":true}`)
	if code != http.StatusConflict || !strings.Contains(body, "could not check which images swarm services use") {
		t.Errorf("GC --remove-untagged without the swarm: %d %s; want 409 saying it could not check", code, body)
	}
	code, body = do("POST", "/api/gc", `{"remove_untagged":true,"dry_run":true}`)
	if code != 200 || !strings.Contains(body, `"unchecked": "could not check`) {
		t.Errorf("GC dry run without the swarm: %d %s; want 200 noting it could not check", code, body)
	}
	code, body = do("POST", "/api/gc", `{"remove_untagged":true,"ignore_swarm":true}`)
	if code != 200 || !strings.Contains(body, `"unchecked"`) {
		t.Errorf("GC with ignore_swarm: %d %s", code, body)
	}
}
