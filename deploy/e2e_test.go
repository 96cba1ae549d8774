package deploy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestBlueGreenRollback is the lab's blue/green exercise: deploy blue,
// update to green, roll back; the published port serves blue, green, blue
// and `labreg status` shows the digests with their tags.
func TestBlueGreenRollback(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	blue := pageImage(t, reg+"/myhttpd:blue", nil, "blue page\n")
	green := pageImage(t, reg+"/myhttpd:green", nil, "green page\n")
	svc := "myhttpd-" + suffix(t)
	removeService(t, docker, svc)
	port := freePort(t)
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}
	common := []string{"--advertise", reg, "--progress", "plain", "--update-delay", "0s", "--update-monitor", "200ms",
		"--rollback-delay", "0s", "--rollback-monitor", "200ms"}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	r := labreg(t, env, append([]string{"deploy", svc, "--image", "myhttpd:blue", "--replicas", "1",
		"--publish", fmt.Sprintf("mode=host,%d:80", port)}, common...)...)
	if r.code != 0 {
		t.Fatalf("deploy blue: exit %d", r.code)
	}
	if !strings.Contains(r.out, reg+"/myhttpd:blue@"+blue) {
		t.Errorf("deploy blue: stdout does not name the pinned image %s@%s", reg+"/myhttpd:blue", blue)
	}
	if !strings.Contains(r.err, "1/1: running") || !strings.Contains(r.err, blue[:19]) {
		t.Errorf("deploy blue: progress shows no running slot with digest %s", blue[:19])
	}
	if got := get(t, url); got != "blue page\n" {
		t.Fatalf("after blue: GET = %q", got)
	}

	r = labreg(t, env, append([]string{"deploy", svc, "--image", "myhttpd:green"}, common[:4]...)...)
	if r.code != 0 {
		t.Fatalf("deploy green: exit %d", r.code)
	}
	if got := get(t, url); got != "green page\n" {
		t.Fatalf("after green: GET = %q", got)
	}

	r = labreg(t, env, "status", svc)
	if r.code != 0 {
		t.Fatalf("status: exit %d", r.code)
	}
	if !strings.Contains(r.out, green) || !strings.Contains(r.out, "tags: green") {
		t.Errorf("status does not show digest %s with tag green", green)
	}

	r = labreg(t, env, "rollback", svc, "--progress", "plain")
	if r.code != 0 {
		t.Fatalf("rollback: exit %d", r.code)
	}
	if !strings.Contains(r.out, blue) {
		t.Errorf("rollback: stdout does not name blue's digest %s", blue)
	}
	if got := get(t, url); got != "blue page\n" {
		t.Fatalf("after rollback: GET = %q", got)
	}
	r = labreg(t, env, "status", svc)
	if !strings.Contains(r.out, blue) || !strings.Contains(r.out, "tags: blue") {
		t.Errorf("status after rollback does not show digest %s with tag blue", blue)
	}
}
