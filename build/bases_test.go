package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestBuilderBuildsMissingBaseBeside: building only images/app on a
// registry that lacks its base builds images/base/1 (beside it) first;
// once the base is there, building images/app again does not rebuild it.
func TestBuilderBuildsMissingBaseBeside(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{
		"images/base/1/Dockerfile":  "FROM scratch\nCOPY f /f\n",
		"images/base/1/f":           "base",
		"images/app/1.0/Dockerfile": "ARG REGISTRY\nFROM ${REGISTRY}/base:1\nCOPY g /g\n",
		"images/app/1.0/g":          "app",
		"images/other/1/Dockerfile": "FROM scratch\nCOPY h /h\n", // not a base of app: never built
		"images/other/1/h":          "other",
	})
	app := Target{Context: filepath.Join(root, "images/app/1.0"), Ref: addr + "/app:1.0", Insecure: true,
		BuildArgs: map[string]string{"REGISTRY": addr}}
	build := func() ([]string, string) {
		var refs []string
		var progress bytes.Buffer
		b := &Builder{Native: newTestNative(t), Progress: &progress}
		if err := b.Build(context.Background(), []Target{app}, func(r Result) { refs = append(refs, r.Ref) }); err != nil {
			t.Fatalf("build: %v\n%s", err, progress.String())
		}
		return refs, progress.String()
	}
	refs, progress := build()
	if want := []string{addr + "/base:1", addr + "/app:1.0"}; strings.Join(refs, " ") != strings.Join(want, " ") {
		t.Fatalf("built %v, want %v", refs, want)
	}
	if !strings.Contains(progress, "base:1: base of app:1.0, not in the registry: building "+filepath.Join(root, "images/base/1")+" first") {
		t.Errorf("progress does not say why base:1 was built:\n%s", progress)
	}
	if got := testenv.Catalog(t, addr); strings.Join(got, " ") != "app base" {
		t.Errorf("registry has %v, want app and base only", got)
	}
	if refs, _ := build(); len(refs) != 1 || refs[0] != addr+"/app:1.0" {
		t.Errorf("second build built %v, want only app:1.0 (the base is in the registry now)", refs)
	}
	// Without a directory beside it, a missing base is still the FROM error.
	if err := os.RemoveAll(filepath.Join(root, "images/base")); err != nil {
		t.Fatal(err)
	}
	app.Ref = addr + "/app:2.0"
	app.BuildArgs = map[string]string{"REGISTRY": addr + "/nowhere"}
	b := &Builder{Native: newTestNative(t)}
	err := b.Build(context.Background(), []Target{app}, nil)
	if err == nil || !strings.Contains(err.Error(), "Dockerfile:2: FROM") {
		t.Fatalf("err = %v, want the FROM line named", err)
	}
}

// staticKeychain gives one user's credentials for every registry.
type staticKeychain struct{ authn.Basic }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return &k.Basic, nil }

// TestBuilderMissingBaseWithCredentials: on a registry with htpasswd auth,
// whether the base is there is asked with the Builder's keychain,
// so a missing base beside the target is built first (asked without
// credentials, the 401 would pass for "present" and the FROM would fail).
func TestBuilderMissingBaseWithCredentials(t *testing.T) {
	const user, pass = "lab", "s3cret-pass"
	addr, _ := testenv.Registry(t, registry.Options{Htpasswd: testenv.Htpasswd(t, user, pass)})
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{
		"images/base/1/Dockerfile":  "FROM scratch\nCOPY f /f\n",
		"images/base/1/f":           "base",
		"images/app/1.0/Dockerfile": "FROM " + addr + "/base:1\nCOPY g /g\n",
		"images/app/1.0/g":          "app",
	})
	kc := staticKeychain{authn.Basic{Username: user, Password: pass}}
	n, err := NewNative(NativeOptions{Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var refs []string
	var progress bytes.Buffer
	b := &Builder{Native: n, Keychain: kc, Progress: &progress}
	app := Target{Context: filepath.Join(root, "images/app/1.0"), Ref: addr + "/app:1.0", Insecure: true}
	if err := b.Build(context.Background(), []Target{app}, func(r Result) { refs = append(refs, r.Ref) }); err != nil {
		t.Fatalf("build: %v\n%s", err, progress.String())
	}
	if want := []string{addr + "/base:1", addr + "/app:1.0"}; strings.Join(refs, " ") != strings.Join(want, " ") {
		t.Fatalf("built %v, want %v\n%s", refs, want, progress.String())
	}
}
