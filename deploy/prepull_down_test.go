package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestPrepullNodeDown: a node that goes down while it pulls (its pull
// stalls, then its engine stops) is not waited for: the prepull ends soon
// after swarm marks the node down, says so, and the deploy goes on.
func TestPrepullNodeDown(t *testing.T) {
	docker := testenv.Swarm(t)
	port, _ := testenv.WorkerRegistry(t, registry.Options{})
	w := testenv.Worker(t, "wdown")
	id := suffix(t)
	img, layer := stallImage(t, id)
	digest := testenv.Push(t, "127.0.0.1:"+port+"/down:"+id, img)

	// The registry as the worker sees it: the layer download never answers.
	frontPort, stalled := stallingFront(t, "127.0.0.1:"+port, "0.0.0.0:0", layer)
	// pinned: the manager's engine does not trust the worker-side address
	ref := w.HostIP + ":" + frontPort + "/down:" + id + "@" + digest.String()

	var progress recorder
	c, err := deploy.New(deploy.Options{DockerConfigDir: dockerConfig(t, "", "", ""), OnProgress: progress.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Second)
	defer cancel()
	if _, err := c.LabelNode(ctx, w.ID, map[string]string{"labreg.test": id}, nil); err != nil {
		t.Fatal(err)
	}
	svc := "predown-" + id
	removeService(t, docker, svc)
	go func() {
		select {
		case <-stalled:
			t.Logf("%s pulls the layer (stalled): crashing its engine", w.Name)
			if err := w.Crash(); err != nil {
				t.Error(err)
			}
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	_, err = c.Deploy(ctx, deploy.Spec{Name: svc, Image: ref, Constraints: []string{"node.labels.labreg.test==" + id}},
		deploy.DeployOptions{Prepull: true, Detach: true, Timeout: 60 * time.Second})
	took := time.Since(start)
	t.Logf("Deploy: %v after %s\nprogress:\n%s", err, took.Round(time.Millisecond), progress.String())
	if err != nil {
		t.Fatalf("Deploy (prepull, detached): %v", err)
	}
	if progress.index(func(p deploy.Progress) bool {
		return p.Stage == deploy.StagePrepull && p.Node == w.Name && strings.Contains(p.Message, "is down: not waiting for it")
	}) < 0 {
		t.Errorf("progress does not say that %s is down and not waited for", w.Name)
	}
	if took > 45*time.Second {
		t.Errorf("prepull took %s: it waited for a node that was down", took.Round(time.Millisecond))
	}
}
