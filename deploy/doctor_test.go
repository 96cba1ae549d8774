package deploy_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestDoctor: a labreg registry on loopback passes every check on this
// engine (swarm manager, 127.0.0.0/8 is insecure); a closed port fails
// "registry reachable"; an address the engine does not trust fails with
// the daemon.json fix naming the address. A TLS registry is probed over
// https and needs no insecure-registries entry (#14 bug 3: doctor probed
// http:// and asked for insecure-registries with TLS on).
func TestDoctor(t *testing.T) {
	testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tlsReg := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.Write([]byte("{}"))
			return
		}
		http.NotFound(w, r)
	}))
	defer tlsReg.Close()
	tlsAddr := strings.TrimPrefix(tlsReg.URL, "https://")
	tests := []struct {
		name      string
		advertise string
		tls       bool
		failing   map[string]bool
		fixHas    string
	}{
		{"loopback registry", reg, false, map[string]bool{}, ""},
		{"closed port", closed, false, map[string]bool{"registry reachable": true}, ""},
		{"untrusted address", "192.0.2.1:1", false, map[string]bool{"registry reachable": true, "this engine trusts the registry": true},
			`add "192.0.2.1:1" to "insecure-registries" in /etc/docker/daemon.json`},
		{"TLS registry", tlsAddr, true, map[string]bool{}, ""},
		{"plain registry called TLS", reg, true, map[string]bool{"registry reachable": true}, "the registry speaks plain HTTP"},
	}
	dc, err := deploy.New(deploy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10e9)
			defer cancel()
			d, err := dc.Doctor(ctx, tc.advertise, deploy.DoctorOptions{TLS: tc.tls, LocalOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			fixes := ""
			for _, c := range d.Checks {
				if c.OK == tc.failing[c.Name] {
					t.Errorf("%s: ok=%v (%s)", c.Name, c.OK, c.Detail)
				}
				if c.OK && c.Fix != "" {
					t.Errorf("%s passed but carries a fix: %s", c.Name, c.Fix)
				}
				fixes += c.Fix + "\n"
				if tc.tls && strings.Contains(c.Fix+c.Detail, "insecure-registries") && !strings.Contains(c.Detail, "no insecure-registries entry needed") {
					t.Errorf("TLS registry, yet %s says %q / %q", c.Name, c.Detail, c.Fix)
				}
			}
			if !strings.Contains(fixes, tc.fixHas) {
				t.Errorf("fixes %q do not say %q", fixes, tc.fixHas)
			}
		})
	}
}

// TestDoctorProbe: doctor pushes its probe image and runs it on every
// node; this manager trusts a loopback registry, so its node check passes.
func TestDoctorProbe(t *testing.T) {
	testenv.Swarm(t)
	testenv.SwarmServices(t) // the probe is a global job
	reg, _ := testenv.Registry(t, registry.Options{})
	t.Setenv("DOCKER_CONFIG", dockerConfig(t, reg, "", ""))
	dc, err := deploy.New(deploy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	d, err := dc.Doctor(t.Context(), reg, deploy.DoctorOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	nodes := 0
	for _, c := range d.Checks {
		t.Logf("ok=%v %s: %s %s", c.OK, c.Name, c.Detail, c.Fix)
		if c.Node != "" && strings.HasPrefix(c.Name, "node ") {
			nodes++
			if !c.OK || !strings.Contains(c.Detail, "pulled "+reg+"/labreg-doctor:probe") {
				t.Errorf("%s: ok=%v %s", c.Name, c.OK, c.Detail)
			}
		}
	}
	if nodes == 0 || !d.OK() {
		t.Errorf("want every check ok and one per node, got %d node checks", nodes)
	}
}
