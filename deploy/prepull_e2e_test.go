package deploy_test

import (
	"context"
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
// registry stalls its layer download), DeployOptions.Timeout ends the
// prepull in time with an error naming that node; the service is not
// touched and the prepull job is removed.
func TestPrepullTimeout(t *testing.T) {
	docker := testenv.Swarm(t)
	backend, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	img, layer := stallImage(t, id)
	testenv.Push(t, backend+"/stall:"+id, img)

	// The registry as every node sees it: manifests and config are served,
	// the layer download never answers.
	frontPort, _ := stallingFront(t, backend, "127.0.0.1:0", layer)
	reg := "127.0.0.1:" + frontPort

	svc := "prestall-" + id
	removeService(t, docker, svc)
	var progress recorder
	c, err := deploy.New(deploy.Options{Registry: reg, DockerConfigDir: dockerConfig(t, reg, "", ""), OnProgress: progress.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Long enough for swarm to hand the prepull task to the node even when
	// the other packages' tests keep dockerd busy (at 4s it once had not,
	// and the error rightly said that no node had taken the task yet).
	const timeout = 8 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.Deploy(ctx, deploy.Spec{Name: svc, Image: "stall:" + id, Constraints: []string{onManager(t, docker)}},
		deploy.DeployOptions{Prepull: true, Timeout: timeout})
	took := time.Since(start)
	t.Logf("Deploy: %v after %s\nprogress:\n%s", err, took.Round(time.Millisecond), progress.String())
	if err == nil {
		t.Fatal("Deploy with a stalled pull succeeded")
	}
	if took > timeout+3*time.Second {
		t.Errorf("Deploy returned after %s, want about --timeout %s", took.Round(time.Millisecond), timeout)
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
