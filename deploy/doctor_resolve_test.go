package deploy

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

const pinnedRef = "labreg-doctor@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestProbeLine(t *testing.T) {
	refused := errors.New("dial tcp 10.2.0.10:5000: connect: connection refused")
	for _, tc := range []struct {
		name  string
		addrs []string
		errs  []error
		want  string
	}{
		{"one address serves it", []string{"10.1.0.10"}, []error{nil},
			"registry.lab resolves to 10.1.0.10 there, which serves labreg-doctor@sha256:0123456789ab (the pinned digest)"},
		{"two addresses serve it", []string{"10.1.0.10", "10.1.0.11"}, []error{nil, nil},
			"registry.lab resolves to 10.1.0.10, 10.1.0.11 there, which all serve labreg-doctor@sha256:0123456789ab (the pinned digest)"},
		{"one of two does not", []string{"10.1.0.10", "10.2.0.10"}, []error{nil, refused},
			"registry.lab resolves to 10.1.0.10, 10.2.0.10 there, which does not serve labreg-doctor@sha256:0123456789ab: 10.2.0.10: " + refused.Error()},
		{"it wants credentials", []string{"10.1.0.10"}, []error{errCredentials},
			"registry.lab resolves to 10.1.0.10 there, which serves labreg-doctor@sha256:0123456789ab (the pinned digest; 10.1.0.10 wants credentials: the node's engine pulled it with the forwarded ones)"},
		{"no address", nil, nil, "registry.lab does not resolve there (no /etc/hosts entry, no DNS answer)"},
	} {
		if got := probeLine("registry.lab", tc.addrs, tc.errs, pinnedRef); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestNamedRegistry(t *testing.T) {
	for in, want := range map[string]bool{
		"registry.lab:5000": true, "localhost:5000": true, "registry.lab": true,
		"10.1.0.10:5000": false, "[::1]:5000": false, "211.183.3.100": false,
	} {
		if got := namedRegistry(in); got != want {
			t.Errorf("namedRegistry(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestNodeProbeArgs(t *testing.T) {
	img := "registry.lab:5000/labreg-doctor:node-probe@sha256:abc"
	if got, want := nodeProbeArgs("registry.lab:5000", img, false), []string{"/labreg", "doctor", "node-probe", "registry.lab:5000", "labreg-doctor@sha256:abc"}; !slices.Equal(got, want) {
		t.Errorf("plain HTTP: %q, want %q", got, want)
	}
	if got := nodeProbeArgs("registry.lab:5000", img, true); !slices.Contains(got, "--tls") {
		t.Errorf("TLS: %q has no --tls", got)
	}
}

// TestNodeProbe: what `labreg doctor node-probe` reports, against a real
// registry named "localhost": it serves the pushed probe's digest, not one
// it lacks. (A name that resolves nowhere is TestProbeLine's: looking one up
// would ask this machine's DNS server.)
func TestNodeProbe(t *testing.T) {
	addr, _ := testenv.Registry(t, registry.Options{})
	_, port, _ := strings.Cut(addr, ":")
	img, err := probeImage()
	if err != nil {
		t.Fatal(err)
	}
	d := testenv.Push(t, addr+"/"+ProbeRepo+":probe", img)
	ctx := t.Context()
	line, ok := NodeProbe(ctx, "localhost:"+port, ProbeRepo+"@"+d.String(), false)
	if !ok || !strings.HasPrefix(line, "localhost resolves to 127.0.0.1") || !strings.HasSuffix(line, "which serves labreg-doctor@"+d.String()[:19]+" (the pinned digest)") {
		t.Errorf("pushed digest: %v %q", ok, line)
	}
	line, ok = NodeProbe(ctx, "localhost:"+port, pinnedRef, false)
	if ok || !strings.Contains(line, "which does not serve labreg-doctor@sha256:0123456789ab") || !strings.Contains(line, "127.0.0.1: manifest by digest: 404 Not Found") {
		t.Errorf("digest it lacks: %v %q", ok, line)
	}
	// with basic auth on, the probe has no credentials; the node's engine
	// (which pulled the probe with the forwarded ones) vouches for it
	authAddr, _ := testenv.Registry(t, registry.Options{Htpasswd: testenv.Htpasswd(t, "u", "p")})
	_, authPort, _ := strings.Cut(authAddr, ":")
	line, ok = NodeProbe(ctx, "localhost:"+authPort, pinnedRef, false)
	if !ok || !strings.Contains(line, "127.0.0.1 wants credentials") {
		t.Errorf("registry with basic auth: %v %q", ok, line)
	}
	if line, ok := NodeProbe(ctx, "localhost", pinnedRef, false); ok || !strings.Contains(line, "want HOST:PORT") {
		t.Errorf("no port: %v %q", ok, line)
	}
}
