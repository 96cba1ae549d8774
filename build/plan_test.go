package build

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
)

// writeTree writes files (path -> content) under a new temp dir. A content
// starting with "symlink:" makes a symlink to the rest.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, files)
	return dir
}

func TestPlanErrors(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("password"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string // "" = no error; else the message after the Dockerfile path
	}{
		{"good", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY a.txt /a.txt\n",
			"a.txt":      "a",
		}, ""},
		{"missing COPY source", map[string]string{
			"Dockerfile": "FROM scratch\nENV X=1\nCOPY nope.txt /\n",
		}, `:3: COPY: source "nope.txt" not found in build context`},
		{"unknown instruction", map[string]string{
			"Dockerfile": "FROM scratch\nCOPYY a /a\n",
		}, `:2: COPYY: unknown instruction: COPYY (did you mean COPY?)`},
		{"dot-dot escape", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY ../secret /\n",
		}, `:2: COPY: source "../secret" is outside the build context`},
		{"dot-dot escape through a subdirectory", map[string]string{
			"Dockerfile": "FROM scratch\nADD sub/../../secret /\n",
			"sub/x":      "x",
		}, `:2: ADD: source "sub/../../secret" is outside the build context`},
		{"absolute source", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY /etc/passwd /\n",
		}, `:2: COPY: source "/etc/passwd" is an absolute path; sources must be inside the build context`},
		{"symlink pointing outside", map[string]string{
			"Dockerfile": "FROM scratch\n\nCOPY secret /\n",
			"secret":     "symlink:" + outside,
		}, `:3: COPY: source "secret" is a symlink to ` + outside + `, outside the build context`},
		{"symlink inside is fine", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY link /\n",
			"a.txt":      "a",
			"link":       "symlink:a.txt",
		}, ""},
		{"dockerignore excludes the source", map[string]string{
			"Dockerfile":    "FROM scratch\nCOPY notes.md /\n",
			".dockerignore": "*.md\n",
			"notes.md":      "x",
		}, `:2: COPY: source "notes.md" not found in build context (excluded by .dockerignore)`},
		{"glob matches nothing", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY *.html /www/\n",
		}, `:2: COPY: no source files match "*.html" in the build context`},
		{"variables expand in sources", map[string]string{
			"Dockerfile": "FROM scratch\nARG PAGE=index\nCOPY ${PAGE}.html /www/\n",
			"index.html": "x",
		}, ""},
		{"build arg changes the source", map[string]string{
			"Dockerfile": "FROM scratch\nARG PAGE=index\nCOPY $PAGE.html /www/\n",
			"index.html": "x",
		}, `:3: COPY: source "other.html" not found in build context`},
		{"bad chmod", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY --chmod=999 a.txt /\n",
			"a.txt":      "a",
		}, `:2: COPY: --chmod=999: not an octal mode`},
		{"instruction before FROM", map[string]string{
			"Dockerfile": "ENV A=b\nFROM scratch\n",
		}, `:1: ENV: instruction before the first FROM`},
		{"no FROM", map[string]string{
			"Dockerfile": "# nothing\n",
		}, `:1: file with no instructions`},
		{"remote ADD", map[string]string{
			"Dockerfile": "FROM scratch\nADD http://example.com/x /x\n",
		}, `:2: ADD: source "http://example.com/x": remote sources are not supported by the native engine (offline); use COPY with a local file`},
		{"bad EXPOSE", map[string]string{
			"Dockerfile": "FROM scratch\nEXPOSE 80/foo\n",
		}, `:2: EXPOSE: invalid port "80/foo"`},
		{"a variable the base image may define is checked at build time", map[string]string{
			"Dockerfile": "FROM localhost:5000/base:1 AS b\nFROM b\nCOPY ${FROM_BASE}.txt /\n",
		}, ""},
		{"with FROM scratch every variable is known", map[string]string{
			"Dockerfile": "FROM scratch\nCOPY ${UNSET}.txt /\n",
		}, `:2: COPY: source ".txt" not found in build context`},
		{"RUN plans fine (BuildKit builds it)", map[string]string{
			"Dockerfile": "FROM scratch\nRUN true\n",
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeTree(t, tc.files)
			args := map[string]string{}
			if strings.Contains(tc.name, "build arg") {
				args["PAGE"] = "other"
			}
			_, err := NewPlan(context.Background(), Target{Context: dir, BuildArgs: args}, nil)
			df := filepath.Join(dir, "Dockerfile")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Plan: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Plan succeeded, want error %q", tc.want)
			case tc.want != "" && err.Error() != df+tc.want:
				t.Fatalf("Plan error\n got: %v\nwant: %s", err, df+tc.want)
			}
		})
	}
}

func TestHasRun(t *testing.T) {
	for _, tc := range []struct {
		src  string
		line int
	}{
		{"FROM scratch\nCOPY a /\n", 0},
		{"FROM busybox AS b\nRUN echo hi > /x\nFROM scratch\nCOPY --from=b /x /\n", 2},
		{"FROM scratch\nCMD [\"run\"]\n", 0},
	} {
		df, err := parseDockerfile("Dockerfile", []byte(tc.src))
		if err != nil {
			t.Fatal(err)
		}
		line, ok := df.HasRun()
		if line != tc.line || ok != (tc.line > 0) {
			t.Errorf("%q: HasRun = %d, %v; want line %d", tc.src, line, ok, tc.line)
		}
	}
}

func TestBases(t *testing.T) {
	src := "ARG REGISTRY=localhost:5000\nARG TAG=1\nFROM ${REGISTRY}/webserver:${TAG} AS web\nFROM web\nFROM scratch\nCOPY --from=web / /\nFROM ${REGISTRY}/other:2\n"
	df, err := parseDockerfile("Dockerfile", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	got, err := df.Bases(map[string]string{"REGISTRY": "10.0.0.1:5000"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.1:5000/other:2", "10.0.0.1:5000/webserver:1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("Bases = %q, want %q", got, want)
	}
}

func TestDiscover(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"images/samsung/1.0/Dockerfile":     "FROM scratch\n",
		"images/samsung/2.0/Dockerfile":     "FROM scratch\n",
		"images/myhttpd/blue/Dockerfile":    "FROM scratch\n",
		"images/webserver/main.go":          "package main\n",
		"images/webserver/1/Dockerfile":     "FROM scratch\n",
		"images/webserver/1/sub/Dockerfile": "FROM scratch\n", // inside an image's context: not an image
		"empty/README":                      "",
	})
	names := func(ds []Dir) string {
		var s []string
		for _, d := range ds {
			s = append(s, d.Repo+":"+d.Tag)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		args []string
		want string
		err  string
	}{
		{[]string{"images"}, "myhttpd:blue samsung:1.0 samsung:2.0 webserver:1", ""},
		{[]string{"images/samsung"}, "samsung:1.0 samsung:2.0", ""},
		{[]string{"images/samsung/2.0", "images/samsung"}, "samsung:1.0 samsung:2.0", ""},
		{[]string{"images/myhttpd/blue"}, "myhttpd:blue", ""},
		{[]string{"empty"}, "", "empty: no Dockerfile in it or below it"},
		{[]string{"nope"}, "", "image directory: stat nope: no such file or directory"},
	} {
		t.Run(strings.Join(tc.args, ","), func(t *testing.T) {
			t.Chdir(dir)
			got, err := Discover(tc.args...)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("Discover error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if names(got) != tc.want {
				t.Fatalf("Discover = %s, want %s", names(got), tc.want)
			}
		})
	}
}
