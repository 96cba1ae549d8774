package deploy

import (
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestLayoutMatch: deploy finds REPO:TAG in layouts as labreg build (full
// name in ref.name) and BuildKit's OCI exporter (tag in ref.name, full name
// in io.containerd.image.name) write them.
func TestLayoutMatch(t *testing.T) {
	img := func(env string) v1.Image {
		i, err := mutate.Config(empty.Image, v1.Config{Env: []string{env}})
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	dir := filepath.Join(t.TempDir(), "oci-layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]v1.Hash{}
	for _, e := range []struct {
		key string
		ann map[string]string
	}{
		{"labreg", map[string]string{annotationRefName: "127.0.0.1:5000/app:green"}},
		{"buildkit", map[string]string{annotationRefName: "blue", annotationImageName: "127.0.0.1:5000/app:blue"}},
		{"other-host", map[string]string{annotationRefName: "localhost:5000/web:v1"}},
		{"same-host", map[string]string{annotationRefName: "10.0.0.1:5000/web:v1"}},
		{"other-host-later", map[string]string{annotationRefName: "localhost:5000/web:v1"}},
		{"tag-only", map[string]string{annotationRefName: "v2"}},
	} {
		i := img(e.key)
		if err := p.AppendImage(i, layout.WithAnnotations(e.ann)); err != nil {
			t.Fatal(err)
		}
		digests[e.key], _ = i.Digest()
	}
	tests := []struct {
		dir, full, want string // want "" = not found
	}{
		{dir, "127.0.0.1:5000/app:green", "labreg"},
		{dir, "127.0.0.1:5000/app:blue", "buildkit"},
		{dir, "10.0.0.2:5000/app:green", "labreg"},        // built for another registry address
		{dir, "10.0.0.1:5000/web:v1", "same-host"},        // the exact name wins
		{dir, "10.9.9.9:5000/web:v1", "other-host-later"}, // else the newest
		{dir, "127.0.0.1:5000/app:v2", ""},                // a bare tag names no repository
		{dir, "127.0.0.1:5000/app:red", ""},
		{dir, "127.0.0.1:5000/other/app:green", ""},
		{filepath.Join(t.TempDir(), "missing"), "127.0.0.1:5000/app:green", ""},
	}
	for _, tt := range tests {
		t.Run(tt.full, func(t *testing.T) {
			d, ok, err := layoutMatch(tt.dir, tt.full)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "" {
				if ok {
					t.Fatalf("found %s, want nothing", d.Digest)
				}
				return
			}
			if !ok || d.Digest != digests[tt.want] {
				t.Fatalf("got %s (found %v), want the %s image %s", d.Digest, ok, tt.want, digests[tt.want])
			}
		})
	}
}
