package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "labreg.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadPrecedence(t *testing.T) {
	file := writeFile(t, "registry:\n  listen: \":6000\"\n  data: /from/file\n  drain_timeout: 5s\nui:\n  listen: \":9000\"\n")
	tests := []struct {
		name    string
		env     map[string]string
		flags   map[string]string
		listen  string
		data    string
		ui      string
		drain   time.Duration
		adv     string
		client  string
		readOnl bool
	}{
		{name: "file only", listen: ":6000", data: "/from/file", ui: ":9000", drain: 5 * time.Second},
		{name: "env beats file", env: map[string]string{"LABREG_LISTEN": ":7000", "LABREG_READONLY": "true"},
			listen: ":7000", data: "/from/file", ui: ":9000", drain: 5 * time.Second, readOnl: true},
		{name: "flag beats env", env: map[string]string{"LABREG_LISTEN": ":7000"}, flags: map[string]string{"listen": ":8000", "ui-listen": ""},
			listen: ":8000", data: "/from/file", ui: "", drain: 5 * time.Second},
		{name: "advertise set, client registry follows it", flags: map[string]string{"advertise": "211.183.3.100:5000"},
			listen: ":6000", data: "/from/file", ui: ":9000", drain: 5 * time.Second, adv: "211.183.3.100:5000", client: "211.183.3.100:5000"},
		{name: "client registry own value", env: map[string]string{"LABREG_REGISTRY": "127.0.0.1:5000"}, flags: map[string]string{"advertise": "10.0.0.1:5000"},
			listen: ":6000", data: "/from/file", ui: ":9000", drain: 5 * time.Second, adv: "10.0.0.1:5000", client: "127.0.0.1:5000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(Sources{File: file, Env: envOf(tt.env), Flags: tt.flags})
			if err != nil {
				t.Fatal(err)
			}
			if c.Registry.Listen != tt.listen || c.Registry.Data != tt.data || c.UI.Listen != tt.ui ||
				c.Registry.DrainTimeout != tt.drain || c.Registry.ReadOnly != tt.readOnl {
				t.Errorf("got listen=%q data=%q ui=%q drain=%s ro=%v", c.Registry.Listen, c.Registry.Data, c.UI.Listen, c.Registry.DrainTimeout, c.Registry.ReadOnly)
			}
			if tt.adv != "" && c.Registry.Advertise != tt.adv {
				t.Errorf("advertise = %q, want %q", c.Registry.Advertise, tt.adv)
			}
			if tt.client != "" && c.Client.Registry != tt.client {
				t.Errorf("client.registry = %q, want %q", c.Client.Registry, tt.client)
			}
		})
	}
}

func TestDefaultAdvertiseUsesListenPort(t *testing.T) {
	c, err := Load(Sources{Env: envOf(nil), Flags: map[string]string{"listen": "127.0.0.1:5123"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(c.Registry.Advertise, ":5123") || strings.HasPrefix(c.Registry.Advertise, ":") {
		t.Errorf("advertise = %q, want HOST:5123", c.Registry.Advertise)
	}
	if c.Client.Registry != c.Registry.Advertise {
		t.Errorf("client.registry = %q, want the advertised %q", c.Client.Registry, c.Registry.Advertise)
	}
}

func TestLoadErrorsNameTheProblem(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		env   map[string]string
		flags map[string]string
		want  string
	}{
		{name: "unknown key in section", file: "registry:\n  listn: \":5000\"\n", want: `unknown key "registry.listn"`},
		{name: "unknown section", file: "regsitry:\n  listen: \":5000\"\n", want: `unknown key "regsitry"`},
		{name: "bad duration in file", file: "registry:\n  drain_timeout: soon\n", want: "drain_timeout"},
		{name: "bad bool in env", env: map[string]string{"LABREG_READONLY": "maybe"}, want: "LABREG_READONLY"},
		{name: "bad listen flag", flags: map[string]string{"listen": "5000"}, want: `registry.listen: "5000" is not HOST:PORT`},
		{name: "bad port", flags: map[string]string{"advertise": "host:99999"}, want: "registry.advertise"},
		{name: "tls half set", flags: map[string]string{"tls-cert": "c.pem"}, want: "set both or neither"},
		{name: "log level", env: map[string]string{"LABREG_LOG_LEVEL": "loud"}, want: "log.level"},
		{name: "unknown flag", flags: map[string]string{"nope": "x"}, want: "--nope"},
		{name: "bad number in env", env: map[string]string{"LABREG_AUTH_FAIL_BURST": "ten"}, want: `registry.auth_fail_burst: "ten" is not a whole number`},
		{name: "zero auth interval", flags: map[string]string{"auth-fail-interval": "0s"}, want: "registry.auth_fail_interval: must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := Sources{Env: envOf(tt.env), Flags: tt.flags}
			if tt.file != "" {
				src.File = writeFile(t, tt.file)
			}
			_, err := Load(src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	c, err := Load(Sources{File: writeFile(t, ""), Env: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry.Listen != ":5000" || c.UI.Listen != ":8080" || c.Registry.DrainTimeout != 30*time.Second {
		t.Errorf("defaults not applied: %+v", c.Registry)
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	c, err := Load(Sources{Env: envOf(nil), Flags: map[string]string{"listen": ":6001", "data": "/d"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Load(Sources{File: writeFile(t, string(out)), Env: envOf(nil)})
	if err != nil {
		t.Fatalf("printed config does not load back: %v\n%s", err, out)
	}
	if c2.Registry != c.Registry || c2.UI != c.UI || c2.Client != c.Client || c2.Log != c.Log {
		t.Errorf("round trip changed the config:\n%s", out)
	}
}
