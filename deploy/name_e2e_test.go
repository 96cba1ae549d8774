package deploy_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestExactServiceName: a service named like the start of another
// service's ID ("g" and samsung's ID g1k2…, the course's mishap). The
// engine's own lookup would take the ID prefix; labreg addresses services
// by exact name only: status names the unknown service and lists the
// other as a candidate, deploy creates the new service and leaves the
// other untouched, rm removes only the one named.
func TestExactServiceName(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	pageImage(t, reg+"/exact:v1", nil, "one "+id+"\n")
	pageImage(t, reg+"/exact:v2", nil, "two "+id+"\n")
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}
	common := []string{"--advertise", reg, "--progress", "plain", "--constraint", onManager(t, docker)}

	other := "exact-" + id
	removeService(t, docker, other)
	if r := labreg(t, env, append([]string{"deploy", other, "--image", "exact:v1"}, common...)...); r.code != 0 {
		t.Fatalf("deploy %s: exit %d", other, r.code)
	}
	inspect := func(svc, format string) string {
		out, err := exec.Command(docker, "service", "inspect", "--format", format, svc).CombinedOutput()
		if err != nil {
			t.Fatalf("docker service inspect %s: %v: %s", svc, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	otherID := inspect(other, "{{.ID}}")
	before := inspect(other, "{{.Version.Index}} {{.Spec.TaskTemplate.ContainerSpec.Image}}")

	// The shortest prefix of other's ID that no service is named.
	names, err := exec.Command(docker, "service", "ls", "--format", "{{.Name}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	taken := map[string]bool{}
	for _, n := range strings.Fields(string(names)) {
		taken[n] = true
	}
	short := otherID[:1]
	for i := 2; taken[short]; i++ {
		short = otherID[:i]
	}
	removeService(t, docker, short)
	// The control: the engine's own lookup takes the ID prefix (unless
	// another service's ID starts with it too: then it is ambiguous).
	out, err := exec.Command(docker, "service", "inspect", "--format", "{{.Spec.Name}}", short).CombinedOutput()
	t.Logf("docker service inspect %s: %s (%v)", short, strings.TrimSpace(string(out)), err)

	r := labreg(t, env, "status", short)
	if r.code != 1 || !strings.Contains(r.err, fmt.Sprintf("no service named %q", short)) || !strings.Contains(r.err, other) {
		t.Errorf("status %s: exit %d, want 1 and an error naming %q with candidate %s", short, r.code, short, other)
	}
	if strings.Contains(r.out, other) {
		t.Errorf("status %s shows %s", short, other)
	}

	r = labreg(t, env, append([]string{"deploy", short, "--image", "exact:v2"}, common...)...)
	if r.code != 0 {
		t.Fatalf("deploy %s: exit %d", short, r.code)
	}
	if got := inspect(short, "{{.Spec.Name}}"); got != short {
		t.Errorf("deploy %s: the service is named %q", short, got)
	}
	if after := inspect(other, "{{.Version.Index}} {{.Spec.TaskTemplate.ContainerSpec.Image}}"); after != before {
		t.Errorf("deploy %s changed %s: %q, was %q", short, other, after, before)
	}

	r = labreg(t, env, "rm", "--dry-run", short)
	if r.code != 0 || !strings.Contains(r.out, "would remove service "+short+" (") || strings.Contains(r.out, other) {
		t.Errorf("rm --dry-run %s: exit %d, want it to list %s only", short, r.code, short)
	}
	r = labreg(t, env, "rm", short, otherID[:len(short)+1])
	if r.code != 1 || !strings.Contains(r.err, other) {
		t.Errorf("rm with an ID prefix: exit %d, want 1 listing %s as a candidate", r.code, other)
	}
	r = labreg(t, env, "rm", short)
	if r.code != 0 || !strings.Contains(r.out, "removed service "+short) {
		t.Errorf("rm %s: exit %d", short, r.code)
	}
	if out, _ := exec.Command(docker, "service", "ls", "--format", "{{.Name}}").Output(); !strings.Contains(" "+strings.Join(strings.Fields(string(out)), " ")+" ", " "+other+" ") {
		t.Errorf("rm %s removed %s too", short, other)
	}
	inspect(other, "{{.ID}}")
	if out, err := exec.Command(docker, "service", "inspect", short).CombinedOutput(); err == nil && strings.Contains(string(out), `"Name": "`+short+`"`) {
		t.Errorf("service %s still exists after rm", short)
	}
}

// TestUnplaceable: a new service whose constraint no node meets (quiz B
// with a mistyped label) fails soon with swarm's own reason, "no suitable
// node (scheduling constraints not satisfied on N nodes)", and exit
// status 3, instead of waiting out --timeout with "not converged".
func TestUnplaceable(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	pageImage(t, reg+"/nowhere:v1", nil, "nowhere "+id+"\n")
	svc := "nowhere-" + id
	removeService(t, docker, svc)
	r := labreg(t, []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}, "deploy", svc, "--image", "nowhere:v1",
		"--advertise", reg, "--progress", "plain", "--constraint", "node.labels.labreg.nowhere=="+id, "--timeout", "5m")
	if r.code != 3 {
		t.Errorf("exit %d, want 3", r.code)
	}
	msg := lastLine(r.err)
	for _, want := range []string{"cannot place", "slot 1", "no suitable node (scheduling constraints not satisfied on"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q", want)
		}
	}
	if r.took > 2*time.Minute {
		t.Errorf("labreg took %s, want far less than its 5m timeout", r.took.Round(time.Second))
	}
}
