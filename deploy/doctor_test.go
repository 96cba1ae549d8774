package deploy_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestDoctor: a labreg registry on loopback passes every check on this
// engine (swarm manager, 127.0.0.0/8 is insecure); a closed port fails
// "registry reachable"; the snippet names the advertised address.
func TestDoctor(t *testing.T) {
	testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	closed := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tests := []struct {
		advertise string
		failing   map[string]bool
	}{
		{reg, map[string]bool{}},
		{closed, map[string]bool{"registry reachable": true}},
		{"192.0.2.1:1", map[string]bool{"registry reachable": true, "insecure registry on this engine": true}},
	}
	dc, err := deploy.New(deploy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, tc := range tests {
		t.Run(tc.advertise, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10e9)
			defer cancel()
			d, err := dc.Doctor(ctx, tc.advertise)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range d.Checks {
				if c.OK == tc.failing[c.Name] {
					t.Errorf("%s: ok=%v (%s)", c.Name, c.OK, c.Detail)
				}
			}
			want := fmt.Sprintf("{\n  \"insecure-registries\": [\n    %q\n  ]\n}", tc.advertise)
			if d.DaemonJSON != want {
				t.Errorf("daemon.json snippet:\n%s\nwant:\n%s", d.DaemonJSON, want)
			}
		})
	}
}
