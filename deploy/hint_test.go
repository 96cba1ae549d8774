package deploy

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestPullHintNamedRegistry: a node's "No such image" for an image the
// registry serves from here is the node's side; when the registry is named
// by a host name, the name may lead elsewhere on that node (a zone mirror),
// and the hint says so and points at doctor, instead of only blaming
// trust.
func TestPullHintNamedRegistry(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	_, port, _ := strings.Cut(addr, ":")
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.Push(t, addr+"/hint:1", img)
	c := fakeClient(&fakeEngine{}, &[]Progress{})
	for _, tc := range []struct {
		host      string
		want, not string
	}{
		{"localhost:" + port, "on worker3 the name localhost may lead elsewhere", ""},
		{"127.0.0.1:" + port, "is not trusted by worker3", "may lead elsewhere"},
	} {
		image := tc.host + "/hint:1@" + d.String()
		got := c.pullHint(t.Context(), image, "worker3", "No such image: "+image, true)
		if !strings.Contains(got, tc.want) || tc.not != "" && strings.Contains(got, tc.not) {
			t.Errorf("%s: hint %q, want one saying %q (and not %q)", tc.host, got, tc.want, tc.not)
		}
		if !strings.Contains(got, "labreg doctor") {
			t.Errorf("%s: hint %q does not point at labreg doctor", tc.host, got)
		}
	}
}
