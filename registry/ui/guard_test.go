package ui

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestHostsAndOrigin: the UI answers only to its names (ui.hosts; IP
// addresses and localhost always), so a DNS-rebound page cannot read or
// write it, and refuses writes whose Origin is "null" or another host.
func TestHostsAndOrigin(t *testing.T) {
	f := newFixture(t, false) // Advertise registry.lab:5000: the UI answers to registry.lab
	testenv.Push(t, f.addr+"/r/one:a", image(t, "amd64", time.Now(), nil, 10))
	port := f.ui.URL[strings.LastIndex(f.ui.URL, ":"):]
	tok := strings.Repeat("a", 32)
	form := url.Values{"tag": {"a"}, "csrf": {tok}}.Encode()
	for _, tc := range []struct {
		name, method, path, host, origin string
		want                             int
	}{
		{"a page by IP", "GET", "/", "", "", 200},
		{"a page by localhost", "GET", "/", "localhost" + port, "", 200},
		{"a page by the advertised name", "GET", "/api/repositories", "Registry.lab" + port, "", 200},
		{"a page by a rebound name", "GET", "/api/repositories", "evil.example" + port, "", 403},
		{"a page by a rebound name, HTML", "GET", "/", "evil.example" + port, "", 403},
		{"a form from Origin null", "POST", "/r/r/one/-/delete-tags", "", "null", 403},
		{"a form from another site", "POST", "/r/r/one/-/delete-tags", "", "http://evil.example", 403},
		{"a form from another site named like the Host", "POST", "/r/r/one/-/delete-tags", "evil.example" + port, "http://evil.example" + port, 403},
		{"an API delete from Origin null", "DELETE", "/api/repositories/r/one/-/tags/a", "", "null", 403},
		{"an API GC from another allowed name", "POST", "/api/gc", "", "http://localhost" + port, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := ""
			if tc.method == "POST" {
				body = form
			}
			req, _ := http.NewRequest(tc.method, f.ui.URL+tc.path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.AddCookie(&http.Cookie{Name: csrfCookie, Value: tok})
			if tc.host != "" {
				req.Host = tc.host
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var eb struct{ Errors []struct{ Code string } }
			json.NewDecoder(resp.Body).Decode(&eb)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s (Host %q, Origin %q): %d, want %d", tc.method, tc.path, tc.host, tc.origin, resp.StatusCode, tc.want)
			}
			if tc.want == 403 && strings.HasPrefix(tc.path, "/api/") && (len(eb.Errors) == 0 || eb.Errors[0].Code != "DENIED") {
				t.Errorf("%s %s: refusal is not an OCI error body: %+v", tc.method, tc.path, eb)
			}
		})
	}
	// A same-origin form still works.
	req, _ := http.NewRequest("POST", f.ui.URL+"/r/r/one/-/delete-tags", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", f.ui.URL)
	req.AddCookie(&http.Cookie{Name: csrfCookie, Value: tok})
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		t.Errorf("same-origin delete form: %d", resp.StatusCode)
	}
}

// TestEventUserWithoutAuth is #14's bug 4: with UI auth off, a Basic
// header names nobody the UI checked, so a delete's event has no user.
func TestEventUserWithoutAuth(t *testing.T) {
	f := newFixture(t, false)
	testenv.Push(t, f.addr+"/r/two:a", image(t, "amd64", time.Now(), nil, 10))
	req, _ := http.NewRequest("DELETE", f.ui.URL+"/api/repositories/r/two/-/tags/a", nil)
	req.SetBasicAuth("admin", "anything")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("API delete: %d", resp.StatusCode)
	}
	evs, _ := f.srv.Events().Page(0, 10, func(e registry.Event) bool { return e.Action == "delete" && e.Repo == "r/two" })
	if len(evs) != 1 {
		t.Fatalf("delete events of r/two: %+v", evs)
	}
	if evs[0].User != "" {
		t.Errorf("the delete event names user %q, which nobody checked", evs[0].User)
	}

}
