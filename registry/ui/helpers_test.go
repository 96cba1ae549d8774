package ui

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

func TestNatLess(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{[]string{"1.10", "1.9", "1.2"}, []string{"1.2", "1.9", "1.10"}},
		{[]string{"v10", "v9", "latest", "v1.0.0-rc2", "v1.0.0-rc10"}, []string{"latest", "v1.0.0-rc2", "v1.0.0-rc10", "v9", "v10"}},
		{[]string{"007", "7", "06"}, []string{"06", "7", "007"}},
		{[]string{"b", "a", "a1"}, []string{"a", "a1", "b"}},
	}
	for _, tc := range tests {
		got := slices.Clone(tc.in)
		sort.Slice(got, func(i, j int) bool { return natLess(got[i], got[j]) })
		if !slices.Equal(got, tc.want) {
			t.Errorf("natural sort of %q = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDockerfile(t *testing.T) {
	hist := []ocispec.History{
		{CreatedBy: "/bin/sh -c #(nop) ADD file:abc in / "},
		{CreatedBy: `/bin/sh -c #(nop)  CMD ["sh"]`, EmptyLayer: true},
		{CreatedBy: "/bin/sh -c apk add curl"},
		{CreatedBy: "|1 V=2 /bin/sh -c make V=$V"},
		{CreatedBy: "COPY app /app # buildkit"},
		{CreatedBy: ""},
	}
	want := []string{"ADD file:abc in /", `CMD ["sh"]`, "RUN apk add curl", "RUN make V=$V", "COPY app /app"}
	if got := Dockerfile(hist); !slices.Equal(got, want) {
		t.Errorf("Dockerfile = %q, want %q", got, want)
	}
}

func TestSplitRestAndRedact(t *testing.T) {
	for _, tc := range []struct{ in, repo, verb, arg string }{
		{"lab/app", "lab/app", "", ""},
		{"lab/app/", "lab/app", "", ""},
		{"lab/app/-/tag/1.0", "lab/app", "tag", "1.0"},
		{"a/b/c/-/manifest/sha256:ab", "a/b/c", "manifest", "sha256:ab"},
	} {
		r, v, a := splitRest(tc.in)
		if r != tc.repo || v != tc.verb || a != tc.arg {
			t.Errorf("splitRest(%q) = %q %q %q", tc.in, r, v, a)
		}
	}
	for _, tc := range []struct{ in, want Setting }{
		{Setting{"registry.htpasswd", "/etc/labreg/htpasswd"}, Setting{"registry.htpasswd", "/etc/labreg/htpasswd"}},
		{Setting{"auth.password", "hunter2"}, Setting{"auth.password", "(redacted)"}},
		{Setting{"registry.proxy_remote_url", "https://u:p@hub.example"}, Setting{"registry.proxy_remote_url", "https://u:redacted@hub.example"}},
		{Setting{"registry.listen", ":5000"}, Setting{"registry.listen", ":5000"}},
	} {
		if got := redact(tc.in); got != tc.want {
			t.Errorf("redact(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestBasicAuth(t *testing.T) {
	file := testenv.Htpasswd(t, "lab", "s3cret")
	_, srv := testenv.Registry(t, registry.Options{Htpasswd: file})
	u, err := New(Options{Catalog: srv.Catalog(), History: srv.Events(), Htpasswd: file, DataDir: srv.DataDir()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(u)
	defer hs.Close()
	for _, tc := range []struct {
		user, pass string
		want       int
	}{
		{"", "", 401},
		{"lab", "wrong", 401},
		{"nobody", "s3cret", 401},
		{"lab", "s3cret", 200},
	} {
		for _, path := range []string{"/", "/api/repositories", "/static/style.css"} {
			req, _ := http.NewRequest("GET", hs.URL+path, nil)
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s as %q/%q: %d, want %d", path, tc.user, tc.pass, resp.StatusCode, tc.want)
			}
			if tc.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("%s: no basic-auth challenge: %q", path, resp.Header.Get("WWW-Authenticate"))
			}
		}
	}
}
