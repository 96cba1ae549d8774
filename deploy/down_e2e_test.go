package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestDownFile: `labreg down -f FILE` removes the file's service and the
// network, secret and config deploy created for it, and nothing else: a
// network that existed before the deploy (used by the service) stays, and
// so does a service deployed with flags. --dry-run removes nothing.
func TestDownFile(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	pageImage(t, reg+"/web:1", nil, "page "+id+"\n")
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}

	dir := t.TempDir()
	testenv.WriteFiles(t, dir, map[string]string{"pw.txt": "s3cret-" + id, "page.html": "config " + id})
	svc, other := "down-"+id, "keep-"+id
	own, pre := "down-net-"+id, "pre-net-"+id
	if out, err := exec.Command(docker, "network", "create", "-d", "overlay", pre).CombinedOutput(); err != nil {
		t.Fatalf("network create: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(docker, "network", "rm", pre).Run() })
	file := filepath.Join(dir, "stack-"+id+".yaml")
	yml := `services:
  ` + svc + `:
    image: web:1
    networks: [own, pre]
    secrets: [pw]
    configs:
      - source: page
        target: /www/index.html
    deploy:
      placement:
        constraints: [` + onManager(t, docker) + `]
networks:
  own:
    name: ` + own + `
    driver: overlay
  pre:
    name: ` + pre + `
    driver: overlay
secrets:
  pw:
    file: ./pw.txt
configs:
  page:
    file: ./page.html
`
	if err := os.WriteFile(file, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	removeService(t, docker, svc)
	removeService(t, docker, other)
	t.Cleanup(func() { // only if down failed
		exec.Command(docker, "network", "rm", own).Run()
		for _, kind := range []string{"secret", "config"} {
			out, _ := exec.Command(docker, kind, "ls", "-q", "--filter", "label="+deploy.StackLabel+"=stack-"+id).Output()
			for _, s := range strings.Fields(string(out)) {
				exec.Command(docker, kind, "rm", s).Run()
			}
		}
	})
	if r := labreg(t, env, "deploy", "-f", file, "--advertise", reg, "--progress", "plain"); r.code != 0 {
		t.Fatalf("deploy -f: exit %d", r.code)
	}
	if r := labreg(t, env, "deploy", other, "--image", "web:1", "--advertise", reg, "--network", own,
		"--constraint", onManager(t, docker)); r.code != 0 {
		t.Fatalf("deploy %s: exit %d", other, r.code)
	}
	ls := func(kind string) string {
		t.Helper()
		args := []string{kind, "ls", "--format", "{{.Name}}"}
		out, err := exec.Command(docker, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("docker %s ls: %v: %s", kind, err, out)
		}
		return string(out)
	}
	// The service keep-* uses the stack's network: it stays until keep-* goes.
	dry := labreg(t, env, "down", "-f", file, "--dry-run")
	if dry.code != 0 {
		t.Fatalf("down --dry-run: exit %d", dry.code)
	}
	for _, want := range []string{"would remove\tservice\t" + svc + "\n", "would remove\tsecret\tpw-", "would remove\tconfig\tpage-",
		"kept\tnetwork\t" + own + "\t(in use by service " + other + ")"} {
		if !strings.Contains(dry.out, want) {
			t.Errorf("down --dry-run does not say %q", want)
		}
	}
	if strings.Contains(dry.out, pre) || strings.Contains(dry.out, other+"\n") {
		t.Errorf("down --dry-run lists %s or %s, which the file's deploy did not create", pre, other)
	}
	if !strings.Contains(ls("service"), svc) {
		t.Fatalf("--dry-run removed service %s", svc)
	}
	exec.Command(docker, "service", "rm", other).Run()
	r := labreg(t, env, "down", "-f", file)
	if r.code != 0 {
		t.Fatalf("down: exit %d", r.code)
	}
	if got := ls("service"); strings.Contains(got, svc) {
		t.Errorf("service %s still there after down", svc)
	}
	if got := ls("network"); strings.Contains(got, own) || !strings.Contains(got, pre) {
		t.Errorf("networks after down: want %s gone and %s kept:\n%s", own, pre, got)
	}
	for _, kind := range []string{"secret", "config"} {
		out, _ := exec.Command(docker, kind, "ls", "-q", "--filter", "label="+deploy.StackLabel+"=stack-"+id).Output()
		if len(strings.TrimSpace(string(out))) != 0 {
			t.Errorf("%ss of the stack left after down: %s", kind, out)
		}
	}
	// Again: nothing left, nothing to do, still success.
	if r := labreg(t, env, "down", "-f", file); r.code != 0 || r.out != "" {
		t.Errorf("second down: exit %d, stdout %q; want 0 and nothing removed", r.code, r.out)
	}
}
