package deploy_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestRegistryHA is issue #11's acceptance 7 on the lab's four nodes
// (testenv.NewLab): labreg's own image, built by `labreg build
// images/labreg`, runs as the two replicas of deploy/examples/registry-ha.yaml
// (copied as it is, with its secret files) on worker1 and worker2, on a
// bucket of a versitygw on the host. Then:
//   - myhttpd blue and green (`labreg build images/webserver images/myhttpd`)
//     are pushed through worker1's replica, and deploy/examples/myhttpd.yaml
//     deploys blue, then green, from it: every task serves green's page;
//   - a probe image no node has pulled is pushed through worker1's replica;
//   - worker1's dockerd is killed: worker2's replica serves what was pushed
//     through the dead one (one store): worker3 pulls the probe through it,
//     and myhttpd goes back to blue deployed from it alone; every task
//     serves blue's page.
//
// Ports are published in host mode (no IPVS here): each replica answers on
// its own node's address, as the example says.
func TestRegistryHA(t *testing.T) {
	store, bucket := testenv.WorkerS3(t)
	lab := testenv.NewLab(t, registry.Options{})
	root := testenv.RepoRoot(t)
	w1, w2, w3 := lab.Worker("worker1"), lab.Worker("worker2"), lab.Worker("worker3")
	env := labEnv(t, lab, lab.Registry)
	docker := func(args ...string) string { t.Helper(); return labDocker(t, lab, args...) }
	// 1. labreg's own image, into the lab's (single, in-process) registry.
	if r := labreg(t, env, "build", "--registry", lab.Local, filepath.Join(root, "images", "labreg")); r.code != 0 {
		t.Fatalf("labreg build images/labreg: exit %d", r.code)
	}

	// 2. registry-ha.yaml as shipped, beside its secret files, on the store
	// as the manager's side of its link reaches it (every node routes to
	// the host's addresses; the manager is never killed).
	dir := t.TempDir()
	example, err := os.ReadFile(filepath.Join(root, "deploy", "examples", "registry-ha.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	testenv.WriteFiles(t, dir, map[string]string{
		"registry-ha.yaml":          string(example),
		"registry-ha/s3-access-key": store.AccessKey,
		"registry-ha/s3-secret-key": store.SecretKey,
		"registry-ha/http-secret":   hex.EncodeToString(secret) + "\n",
	})
	for _, w := range []string{"worker1", "worker2"} {
		if r := labreg(t, env, "node", "label", w, "registry=true"); r.code != 0 {
			t.Fatalf("labreg node label %s registry=true: exit %d", w, r.code)
		}
	}
	haEnv := append(slices.Clone(env), "REGISTRY_S3="+store.URLAt(bucket, lab.Manager.HostIP))
	if r := labreg(t, haEnv, "deploy", "-f", filepath.Join(dir, "registry-ha.yaml"), "--progress", "plain", "--timeout", "3m"); r.code != 0 {
		t.Fatalf("deploy registry-ha.yaml: exit %d", r.code)
	}
	if got := runningOn(lab, "registry"); !slices.Equal(got, []string{"worker1", "worker2"}) {
		t.Fatalf("registry runs on %q, want worker1 and worker2", got)
	}
	rep1, rep2 := w1.IP+":5000", w2.IP+":5000"
	for _, rep := range []string{rep1, rep2} {
		waitV2(t, rep, 2*time.Minute)
	}

	// 3. myhttpd through worker1's replica, blue then green from it.
	if r := labreg(t, env, "build", "--registry", rep1, filepath.Join(root, "images", "webserver"),
		filepath.Join(root, "images", "myhttpd")); r.code != 0 {
		t.Fatalf("labreg build images/webserver images/myhttpd through %s: exit %d", rep1, r.code)
	}
	page := func(tag string) string {
		b, err := os.ReadFile(filepath.Join(root, "images", "myhttpd", tag, "index.html"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	port := freePort(t)
	myhttpd := func(tag, replica string) {
		t.Helper()
		mEnv := append(labEnv(t, lab, replica), "MYHTTPD_TAG="+tag, "MYHTTPD_PORT="+itoa(port), "MYHTTPD_PUBLISH=host")
		if r := labreg(t, mEnv, "deploy", "-f", filepath.Join(root, "deploy", "examples", "myhttpd.yaml"),
			"--progress", "plain", "--timeout", "3m"); r.code != 0 {
			t.Fatalf("deploy myhttpd:%s from %s: exit %d", tag, replica, r.code)
		}
		image := docker("service", "inspect", "myhttpd", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
		if !strings.HasPrefix(image, replica+"/myhttpd:"+tag+"@sha256:") {
			t.Errorf("myhttpd runs %s, want %s/myhttpd:%s@<digest>", image, replica, tag)
		}
		nodes := runningOn(lab, "myhttpd")
		if len(nodes) != 3 {
			t.Fatalf("myhttpd runs on %q, want 3 nodes", nodes)
		}
		for _, n := range nodes {
			if got := get(t, fmt.Sprintf("http://%s:%d/", labNode(lab, n).IP, port)); got != page(tag) {
				t.Errorf("%s serves %q, want myhttpd %s's page", n, got, tag)
			}
		}
	}
	myhttpd("blue", rep1)
	myhttpd("green", rep1)
	probe := rep1 + "/ha-probe:1"
	pushImage(t, probe, nil, map[string]string{"probe": "pushed through worker1's replica\n"}, "/bin/true")

	// 4. worker1 goes down with its replica; worker2's serves alone.
	if err := w1.Crash(); err != nil {
		t.Fatal(err)
	}
	waitNodeState(t, lab, w1, "down", 2*time.Minute)
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + rep1 + "/v2/"); err == nil {
		resp.Body.Close()
		t.Fatalf("worker1's replica still answers (%s) with its node down", resp.Status)
	}
	if out, err := w3.Docker("pull", rep2+"/ha-probe:1"); err != nil {
		t.Errorf("worker3: docker pull %s/ha-probe:1 (pushed through the dead replica): %v: %s", rep2, err, out)
	}
	myhttpd("blue", rep2)
}

// waitV2 waits until the registry at addr answers GET /v2/ with 200.
func waitV2(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registry at %s does not answer /v2/ after %s: %v", addr, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// labNode is the lab's node named name.
func labNode(lab *testenv.Lab, name string) *testenv.Node {
	if name == lab.Manager.Name {
		return lab.Manager
	}
	return lab.Worker(name)
}

// waitNodeState waits until the lab's manager sees n in state.
func waitNodeState(t *testing.T, lab *testenv.Lab, n *testenv.Node, state string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, _ := lab.Docker("node", "inspect", n.ID, "--format", "{{.Status.State}}")
		if got == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %q after %s, want %s", n.Name, got, timeout, state)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
