package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdvertiseSources: registry.advertise comes from the first default
// config file that exists, else from the labreg serve running on this
// host (its state file, pid alive), else it is derived; serve itself never
// takes it from a running server; the origin says which.
func TestAdvertiseSources(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc.yaml")
	if err := os.WriteFile(etc, []byte("registry:\n  advertise: 10.0.0.9:5000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runtime := filepath.Join(dir, "run")
	env := envOf(map[string]string{"XDG_RUNTIME_DIR": runtime})
	state := StateFile(env)
	if want := filepath.Join(runtime, "labreg", "serve.json"); state != want {
		t.Fatalf("StateFile = %s, want %s", state, want)
	}
	unrecord, err := WriteServerState(state, ServerState{PID: os.Getpid(), Advertise: "10.213.101.1:5000", Listen: "0.0.0.0:5000"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		files    []string
		server   bool
		flags    map[string]string
		want     string
		originIs string
	}{
		{"default file wins over the running server", []string{filepath.Join(dir, "missing.yaml"), etc}, false, nil, "10.0.0.9:5000", "config file " + etc},
		{"the running server", []string{}, false, nil, "10.213.101.1:5000", "the running labreg serve (pid "},
		{"flag wins", []string{}, false, map[string]string{"advertise": "10.1.1.1:5000"}, "10.1.1.1:5000", "flag --advertise"},
		{"serve derives its own", []string{}, true, nil, "", "derived: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, o, err := LoadOrigins(Sources{Env: env, DefaultFiles: tc.files, Server: tc.server, Flags: tc.flags})
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && c.Registry.Advertise != tc.want {
				t.Errorf("advertise %s, want %s", c.Registry.Advertise, tc.want)
			}
			if tc.want == "" && c.Registry.Advertise == "10.213.101.1:5000" {
				t.Errorf("serve took the running server's address")
			}
			if got := o.Of("registry.advertise"); !strings.HasPrefix(got, tc.originIs) {
				t.Errorf("origin %q, want it to start with %q", got, tc.originIs)
			}
			if !strings.Contains(string(c.Annotated(o)), "from: "+tc.originIs) {
				t.Errorf("Annotated does not show the origin:\n%s", c.Annotated(o))
			}
		})
	}
	// A server that is gone (its pid no longer runs) is not asked.
	unrecord()
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state file left after unrecord: %v", err)
	}
	if _, err := WriteServerState(state, ServerState{PID: 1 << 22, Advertise: "10.213.101.1:5000"}); err != nil {
		t.Fatal(err)
	}
	c, o, err := LoadOrigins(Sources{Env: env, DefaultFiles: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry.Advertise == "10.213.101.1:5000" || !strings.HasPrefix(o.Of("registry.advertise"), "derived: ") {
		t.Errorf("a dead server's address was used: %s (%s)", c.Registry.Advertise, o.Of("registry.advertise"))
	}
}
