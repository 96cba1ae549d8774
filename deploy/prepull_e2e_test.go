package deploy_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestPrepullTimeout: when an eligible node cannot finish pulling (the
// registry stalls its layer download), the deploy's deadline ends the
// prepull with an error naming that node; the service is not touched and
// the prepull job is removed.
//
// The deadline passes at a known state, not at a wall-clock time: once the
// node is seen downloading the stalled layer (a fixed timeout once ran out
// under load before swarm had handed the task to the node at all).
// TestDeployPrepullTimeout checks DeployOptions.Timeout itself.
func TestPrepullTimeout(t *testing.T) {
	docker := testenv.Swarm(t)
	backend, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	img, layer := stallImage(t, id)
	testenv.Push(t, backend+"/stall:"+id, img)

	// The registry as every node sees it: manifests and config are served,
	// the layer download never answers.
	frontPort, stalled := stallingFront(t, backend, "127.0.0.1:0", layer)
	reg := "127.0.0.1:" + frontPort

	svc := "prestall-" + id
	removeService(t, docker, svc)
	var progress recorder
	c, err := deploy.New(deploy.Options{Registry: reg, DockerConfigDir: dockerConfig(t, reg, "", ""), OnProgress: progress.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := deploy.DeadlineAt(t.Context(), stalled) // the deadline passes once the node pulls the stalled layer
	_, err = c.Deploy(ctx, deploy.Spec{Name: svc, Image: "stall:" + id, Constraints: []string{onManager(t, docker)}},
		deploy.DeployOptions{Prepull: true, Timeout: 5 * time.Minute})
	t.Logf("Deploy: %v\nprogress:\n%s", err, progress.String())
	if err == nil {
		t.Fatal("Deploy with a stalled pull succeeded")
	}
	var re *deploy.RolloutError
	if !errors.As(err, &re) || re.State != "timeout" {
		t.Errorf("error is not a *RolloutError with state timeout: %#v", err)
	}
	host, _ := exec.Command(docker, "info", "--format", "{{.Name}}").Output()
	if want := "not pulled yet on " + strings.TrimSpace(string(host)); !strings.Contains(err.Error(), want) {
		t.Errorf("error does not say %q", want)
	}
	if out, _ := exec.Command(docker, "service", "ls", "-q", "--filter", "name="+svc).Output(); len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("service %s was created although the prepull failed", svc)
	}
	out, _ := exec.Command(docker, "service", "ls", "-q", "--filter", "label=labreg.prepull="+svc).Output()
	if len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("prepull job left behind: %s", out)
	}
}
