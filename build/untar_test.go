package build

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// hardLinkTar is an archive of one file with two hard links to it, one
// named before it and one after it (tar order is what matters to an
// extractor: a link must follow its target).
func hardLinkTar(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	body := "shared contents\n"
	for _, h := range []*tar.Header{
		{Name: "pkg/m-file", Mode: 0o640, Size: int64(len(body)), Typeflag: tar.TypeReg, Uid: 7, Gid: 8},
		{Name: "pkg/a-link", Linkname: "pkg/m-file", Typeflag: tar.TypeLink},
		{Name: "pkg/z-link", Linkname: "./pkg/m-file", Typeflag: tar.TypeLink},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	return b.String()
}

// extract reads an image's filesystem as an extractor does: a hard link
// takes the contents of an entry seen before it, or fails.
func extract(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = string(data)
		case tar.TypeLink:
			data, ok := files[h.Linkname]
			if !ok {
				t.Fatalf("hard link %s -> %s: no such file before it in the layer", h.Name, h.Linkname)
			}
			files[h.Name] = data
		}
	}
}

// TestAddTarWithHardLinks: ADD of an archive with hard links gives every
// name the file's contents (it used to write each link as an empty file).
func TestAddTarWithHardLinks(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"Dockerfile": "FROM scratch\nADD links.tar /opt/\n",
		"links.tar":  hardLinkTar(t),
	})
	out := filepath.Join(t.TempDir(), "layout")
	res, err := buildOne(t.Context(), newTestNative(t), Target{Context: dir, Ref: "127.0.0.1:9/links:1"}, &Layout{Dir: out})
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	h, err := v1.NewHash(res.Digest)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	files := extract(t, rc)
	for _, n := range []string{"opt/pkg/a-link", "opt/pkg/m-file", "opt/pkg/z-link"} {
		if files[n] != "shared contents\n" {
			t.Errorf("%s = %q, want the linked file's contents (image has %v)", n, files[n], keys(files))
		}
	}
}

// TestAddTarDanglingHardLink: a hard link whose target is not in the
// archive is an error naming both, not an empty file.
func TestAddTarDanglingHardLink(t *testing.T) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "dir/", Mode: 0o755, Typeflag: tar.TypeDir})
	tw.WriteHeader(&tar.Header{Name: "dir/link", Linkname: "dir/gone", Typeflag: tar.TypeLink})
	tw.Close()
	dir := writeTree(t, map[string]string{"Dockerfile": "FROM scratch\nADD links.tar /opt/\n", "links.tar": b.String()})
	_, err := buildOne(t.Context(), newTestNative(t), Target{Context: dir, Ref: "127.0.0.1:9/links:1"}, &Layout{Dir: filepath.Join(t.TempDir(), "l")})
	want := `Dockerfile:2: ADD: unpacking "links.tar": hard link /opt/dir/link: its target /opt/dir/gone is not a file earlier in the archive`
	if err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}
