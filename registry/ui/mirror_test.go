package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestMirrorBanner: the UI of a mirror says on every page that it is one,
// and of which origin; a registry that is no mirror says nothing of it.
func TestMirrorBanner(t *testing.T) {
	origin, _ := testenv.Registry(t, registry.Options{})
	_, srv := testenv.Registry(t, registry.Options{ProxyRemoteURL: "http://" + origin})
	if got, want := srv.Origin(), "http://"+origin; got != want {
		t.Fatalf("Origin() = %q, want %q", got, want)
	}
	u, err := New(Options{Catalog: srv.Catalog(), History: srv.Events(), DataDir: srv.DataDir(), MirrorOf: srv.Origin()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(u)
	t.Cleanup(hs.Close)
	plain := newFixture(t, false)
	for _, tc := range []struct {
		base string
		want bool
	}{{hs.URL, true}, {plain.ui.URL, false}} {
		for _, p := range []string{"/", "/status"} {
			resp, err := http.Get(tc.base + p)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			has := strings.Contains(string(b), "This registry is a mirror of <strong>http://"+origin+"</strong>")
			if resp.StatusCode != http.StatusOK || has != tc.want {
				t.Errorf("%s%s: %d, mirror banner shown %v, want %v", tc.base, p, resp.StatusCode, has, tc.want)
			}
		}
	}
}
