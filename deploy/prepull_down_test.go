package deploy_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
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
	img := buildImage(t, map[string]string{"id": id}, "/bin/sleep", "1000")
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	digest := testenv.Push(t, "127.0.0.1:"+port+"/down:"+id, img)

	// The registry as the worker sees it: the layer download never answers.
	stop, stalled := make(chan struct{}), make(chan struct{})
	var once sync.Once
	u, _ := url.Parse("http://127.0.0.1:" + port)
	proxy := httputil.NewSingleHostReverseProxy(u)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			once.Do(func() { close(stalled) })
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	front.Listener = ln
	front.Start()
	t.Cleanup(func() { close(stop); front.Close() })
	_, frontPort, _ := net.SplitHostPort(ln.Addr().String())
	// pinned: the manager's engine does not trust the worker-side address
	ref := w.HostIP + ":" + frontPort + "/down:" + id + "@" + digest.String()

	var progress testenv.Buffer
	c, err := deploy.New(deploy.Options{DockerConfigDir: dockerConfig(t, "", "", ""), Progress: &progress})
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
	if want := "prepull: " + w.Name + " is down: not waiting for it"; !strings.Contains(progress.String(), want) {
		t.Errorf("progress does not say %q", want)
	}
	if took > 45*time.Second {
		t.Errorf("prepull took %s: it waited for a node that was down", took.Round(time.Millisecond))
	}
}
