package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/labreg/labreg/deploy"
)

// TestLoadExamples loads every shipped example and checks what it promises.
func TestLoadExamples(t *testing.T) {
	tests := []struct {
		file  string
		check func(t *testing.T, s deploy.Spec)
	}{
		{"myhttpd.yaml", func(t *testing.T, s deploy.Spec) {
			if s.Name != "myhttpd" || s.Image != "myhttpd:blue" || s.Replicas == nil || *s.Replicas != 3 {
				t.Errorf("got %s %s replicas %v", s.Name, s.Image, s.Replicas)
			}
			if len(s.Ports) != 1 || s.Ports[0].PublishedPort != 80 || s.Ports[0].TargetPort != 80 || s.Ports[0].PublishMode != "ingress" {
				t.Errorf("ports %+v, want 80:80 ingress", s.Ports)
			}
			if s.Update.FailureAction != "rollback" {
				t.Errorf("update failure action %q", s.Update.FailureAction)
			}
		}},
		{"samsung.yaml", func(t *testing.T, s deploy.Spec) {
			// worker1 and worker2 under the quiz's labels (srv=web, srv=nfs).
			if want := []string{"node.labels.zone == seoul"}; !reflect.DeepEqual(s.Constraints, want) {
				t.Errorf("constraints %q, want %q", s.Constraints, want)
			}
			if len(s.Networks) != 1 || s.Networks[0] != (deploy.Network{Name: "samsung", Subnet: "10.10.3.0/24", Attachable: true}) {
				t.Errorf("networks %+v", s.Networks)
			}
			if len(s.Secrets) != 1 || s.Secrets[0].Name != "samsung_admin" || !filepath.IsAbs(s.Secrets[0].Path) {
				t.Errorf("secrets %+v", s.Secrets)
			}
			if len(s.Ports) != 1 || s.Ports[0].PublishMode != "host" || s.Ports[0].PublishedPort != 8001 {
				t.Errorf("ports %+v", s.Ports)
			}
			if s.EndpointMode != "dnsrr" {
				t.Errorf("endpoint mode %q", s.EndpointMode)
			}
		}},
		{"web-global.yaml", func(t *testing.T, s deploy.Spec) {
			if s.Mode != "global" || s.Replicas != nil {
				t.Errorf("mode %q replicas %v", s.Mode, s.Replicas)
			}
			// webserver:1 (built by labreg build images/) serves /www.
			if s.Image != "webserver:1" || len(s.Configs) != 1 || s.Configs[0].Target != "/www/index.html" {
				t.Errorf("image %s configs %+v", s.Image, s.Configs)
			}
		}},
		{"quiz-a.yaml", func(t *testing.T, s deploy.Spec) {
			if s.Name != "web" || s.Image != "webserver:1" || s.Mode != "global" {
				t.Errorf("got %s %s mode %q", s.Name, s.Image, s.Mode)
			}
			if want := []string{"node.labels.zone == seoul", "node.labels.srv == web"}; !reflect.DeepEqual(s.Constraints, want) {
				t.Errorf("constraints %q, want %q", s.Constraints, want)
			}
			if len(s.Ports) != 1 || s.Ports[0].PublishMode != "host" || s.Ports[0].PublishedPort != 80 {
				t.Errorf("ports %+v, want 80 in host mode", s.Ports)
			}
		}},
		{"quiz-b.yaml", func(t *testing.T, s deploy.Spec) {
			if s.Name != "samsung" || s.Image != "samsung:1.0" || s.Replicas == nil || *s.Replicas != 2 {
				t.Errorf("got %s %s replicas %v", s.Name, s.Image, s.Replicas)
			}
			if want := []string{"node.labels.zone == seoul"}; !reflect.DeepEqual(s.Constraints, want) {
				t.Errorf("constraints %q, want %q", s.Constraints, want)
			}
			if len(s.Networks) != 1 || s.Networks[0] != (deploy.Network{Name: "samsung", Subnet: "10.10.3.0/24", Attachable: true}) {
				t.Errorf("networks %+v", s.Networks)
			}
		}},
		{"db.yaml", func(t *testing.T, s deploy.Spec) {
			if !reflect.DeepEqual(s.Env, []string{"MYSQL_ROOT_PASSWORD_FILE=/run/secrets/db_root"}) {
				t.Errorf("env %q", s.Env)
			}
			if len(s.Secrets) != 1 || s.Secrets[0].Name != "db_root" {
				t.Errorf("secrets %+v", s.Secrets)
			}
			if len(s.Mounts) != 1 || s.Mounts[0].Source != "dbdata" || s.Mounts[0].Target != "/var/lib/mysql" {
				t.Errorf("mounts %+v", s.Mounts)
			}
		}},
		{"registry-ha.yaml", func(t *testing.T, s deploy.Spec) {
			if s.Image != "labreg:1" || s.Replicas == nil || *s.Replicas != 2 {
				t.Errorf("image %s replicas %v", s.Image, s.Replicas)
			}
			if len(s.Ports) != 2 || s.Ports[0].PublishMode != "host" || s.Ports[0].PublishedPort != 5000 || s.Ports[1].PublishMode != "host" {
				t.Errorf("ports %+v, want 5000 and 8080 in host mode", s.Ports)
			}
			if want := []string{"node.labels.registry == true"}; !reflect.DeepEqual(s.Constraints, want) {
				t.Errorf("constraints %q, want %q", s.Constraints, want)
			}
			if len(s.Secrets) != 3 {
				t.Errorf("secrets %+v, want the two S3 keys and the HTTP secret", s.Secrets)
			}
			env := strings.Join(s.Env, "\n")
			for _, w := range []string{"LABREG_STORAGE=s3://", "LABREG_HTTP_SECRET_FILE=/run/secrets/registry_http_secret", "LABREG_S3_SECRET_KEY_FILE=/run/secrets/registry_s3_secret_key"} {
				if !strings.Contains(env, w) {
					t.Errorf("env %q lacks %s", s.Env, w)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			specs, err := deploy.LoadFile(context.Background(), filepath.Join("examples", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if len(specs) != 1 {
				t.Fatalf("%d services, want 1", len(specs))
			}
			tc.check(t, specs[0])
		})
	}
}

// TestLoadFileErrors: bad files are refused with the service and what is wrong.
func TestLoadFileErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"no image", "services:\n  a:\n    environment: [A=1]\n", `service "a" has neither an image`},
		{"external secret", "services:\n  a:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    external: true\n", "secret s"},
		{"bridge network", "services:\n  a:\n    image: x\n    networks: [n]\nnetworks:\n  n:\n    driver: bridge\n", "network n"},
		{"bad mode", "services:\n  a:\n    image: x\n    deploy:\n      mode: daemonset\n", "daemonset"},
		{"negative prepull parallelism", "services:\n  a:\n    image: x\n    x-labreg:\n      prepull: {parallelism: -3}\n", "x-labreg.prepull.parallelism: -3"},
		{"unknown x-labreg key", "services:\n  a:\n    image: x\n    x-labreg:\n      prepul: true\n", `unknown key "prepul"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "compose.yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := deploy.LoadFile(context.Background(), f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestComposePrepull: x-labreg.prepull turns the prepull on for a service,
// with its parallelism (true: the default 50).
func TestComposePrepull(t *testing.T) {
	tests := []struct {
		ext  string
		want *deploy.Prepull
	}{
		{"", nil},
		{"    x-labreg:\n      prepull: false\n", nil},
		{"    x-labreg:\n      prepull: true\n", &deploy.Prepull{Parallelism: deploy.DefaultPrepullParallelism}},
		{"    x-labreg:\n      prepull: {parallelism: 20}\n", &deploy.Prepull{Parallelism: 20}},
		{"    x-labreg:\n      prepull: {parallelism: 0}\n", &deploy.Prepull{Parallelism: 0}},
	}
	for _, tc := range tests {
		f := filepath.Join(t.TempDir(), "compose.yaml")
		if err := os.WriteFile(f, []byte("services:\n  a:\n    image: x\n"+tc.ext), 0o644); err != nil {
			t.Fatal(err)
		}
		specs, err := deploy.LoadFile(context.Background(), f)
		if err != nil {
			t.Fatalf("%q: %v", tc.ext, err)
		}
		if got := specs[0].Prepull; (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
			t.Errorf("%q: Prepull %+v, want %+v", tc.ext, got, tc.want)
		}
	}
}

// TestLoadMirrorExample: examples/mirror.yaml runs one mirror per zone,
// each placed in its zone, each a pull-through cache of the origin with
// the origin's credentials from a secret.
func TestLoadMirrorExample(t *testing.T) {
	specs, err := deploy.LoadFile(context.Background(), filepath.Join("examples", "mirror.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]bool{}
	for _, s := range specs {
		env := strings.Join(s.Env, "\n")
		for _, w := range []string{"LABREG_PROXY_REMOTE_URL=http://", "LABREG_PROXY_CREDENTIALS_FILE=/run/secrets/origin_credentials"} {
			if !strings.Contains(env, w) {
				t.Errorf("%s: env %q lacks %s", s.Name, s.Env, w)
			}
		}
		if len(s.Secrets) != 1 {
			t.Errorf("%s: secrets %+v, want the origin credentials", s.Name, s.Secrets)
		}
		for _, c := range s.Constraints {
			if z, ok := strings.CutPrefix(strings.ReplaceAll(c, " ", ""), "node.labels.zone=="); ok {
				zones[z] = true
				if s.Name != "mirror-"+z {
					t.Errorf("%s placed in zone %s", s.Name, z)
				}
			}
		}
	}
	if len(specs) != 2 || !zones["seoul"] || !zones["busan"] {
		t.Errorf("%d services in zones %v, want one mirror in seoul and one in busan", len(specs), zones)
	}
}
