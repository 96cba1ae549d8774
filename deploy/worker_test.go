package deploy_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestWorkers checks on two real extra swarm nodes (testenv.Worker: a
// dockerd in its own network namespace, joined as a worker, never logged in
// to any registry) what the single-node tests cannot: forwarded registry
// credentials reach the workers, a rolling update and a rollback converge on
// every node, --prepull pulls on every eligible node, and a global service
// runs one task per worker.
//
// Tasks run on the workers only (node.role==worker): the manager's engine
// trusts 127.0.0.0/8 registries over plain HTTP, the workers trust
// testenv.WorkerSubnet, so the registry listens on every address and is
// advertised as w1.HostIP:PORT while the test pushes through 127.0.0.1:PORT.
// The manager's engine cannot read that address, so images are given
// pinned by digest (Deploy then skips asking the engine for the digest).
//
// The workers join the swarm shared by the whole package: no t.Parallel.
func TestWorkers(t *testing.T) {
	docker := testenv.Swarm(t)
	const user, pass = "lab", "w0rker-s3cret"
	port, _ := testenv.WorkerRegistry(t, registry.Options{Htpasswd: testenv.Htpasswd(t, user, pass)})
	local := "127.0.0.1:" + port
	w1 := testenv.Worker(t, "w1")
	w2 := testenv.Worker(t, "w2")
	workers := []*testenv.Node{w1, w2}
	adv := w1.HostIP + ":" + port // every worker routes to the host's addresses
	// The deploying process is logged in (DOCKER_CONFIG); the workers are not.
	dockerCfg := dockerConfig(t, adv, user, pass)
	t.Setenv("DOCKER_CONFIG", dockerCfg)

	id := suffix(t)
	// Only these two workers: other workers may be in the swarm (another
	// test run on this machine), and node.role==worker alone would match them.
	lc, _ := client(t, adv)
	for _, w := range workers {
		if _, err := lc.LabelNode(t.Context(), w.Name, map[string]string{"labreg.test": id}, nil); err != nil {
			t.Fatal(err)
		}
	}
	onWorkers := []string{"node.role==worker", "node.labels.labreg.test==" + id}
	cred := &authn.Basic{Username: user, Password: pass}
	img := func(repo, tag, page string) string {
		d := pageImage(t, local+"/"+repo+":"+tag, cred, page)
		return adv + "/" + repo + ":" + tag + "@" + d
	}
	blueRef := img("web", "blue", "blue "+id+"\n")
	greenRef := img("web", "green", "green "+id+"\n")
	_, blue, _ := strings.Cut(blueRef, "@")
	_, green, _ := strings.Cut(greenRef, "@")
	secretsShown := func(t *testing.T, outs ...string) {
		t.Helper()
		b64 := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		for _, o := range outs {
			if strings.Contains(o, pass) || strings.Contains(o, b64) {
				t.Errorf("output shows the registry password")
			}
		}
	}
	zero, one, two := time.Duration(0), uint64(1), uint64(2)
	fast := deploy.UpdatePolicy{Parallelism: &one, Delay: &zero, Monitor: 500 * time.Millisecond}
	hostPort := func(p int) []swarm.PortConfig {
		return []swarm.PortConfig{{Protocol: network.TCP, TargetPort: 80,
			PublishedPort: uint32(p), PublishMode: swarm.PortConfigPublishModeHost}}
	}

	t.Run("auth forwarding", func(t *testing.T) {
		page := "private " + id + "\n" // unique: the worker must really pull it
		ref := img("private", "v1", page)
		// The control: the worker cannot pull on its own (a docker CLI
		// without a login, or it would send its credentials with the pull).
		pull := exec.Command(docker, "-H", w1.Socket, "pull", ref)
		pull.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig(t, adv, "", ""))
		if out, err := pull.CombinedOutput(); err == nil {
			t.Fatalf("worker %s pulled %s without credentials: the registry does not check auth\n%s", w1.Name, ref, out)
		}
		p := freePort(t)
		spec := func(name string) deploy.Spec {
			return deploy.Spec{Name: name, Image: ref, Replicas: &one, Ports: hostPort(p),
				Constraints: []string{"node.role==worker", "node.hostname==" + w1.Name}}
		}

		t.Run("not forwarded", func(t *testing.T) {
			svc := "wanon-" + id
			removeService(t, docker, svc)
			dc, prog := client(t, adv)
			_, err := dc.Deploy(t.Context(), spec(svc), deploy.DeployOptions{NoRegistryAuth: true, Timeout: 90 * time.Second})
			t.Logf("progress:\n%s", prog)
			var re *deploy.RolloutError
			if !errors.As(err, &re) {
				t.Fatalf("Deploy without forwarded credentials: err = %v, want a *deploy.RolloutError", err)
			}
			t.Logf("error: %v", err)
			msg := err.Error()
			for _, want := range []string{svc, adv, "private:v1", w1.Name} {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not name %q", want)
				}
			}
			if !regexp.MustCompile(`(?i)auth|credential|login|denied|unauthorized`).MatchString(msg) {
				t.Errorf("error does not say that the worker lacked registry credentials")
			}
			if c := containers(t, docker, w1, svc); len(c) != 0 {
				t.Errorf("worker %s runs %v without credentials", w1.Name, c)
			}
			secretsShown(t, msg, prog.String())
		})

		t.Run("not forwarded, CLI", func(t *testing.T) {
			svc := "wanoncli-" + id
			removeService(t, docker, svc)
			r := labreg(t, []string{"DOCKER_CONFIG=" + dockerCfg}, "deploy", svc, "--image", ref, "--advertise", adv,
				"--with-registry-auth=false", "--constraint", "node.role==worker", "--constraint", "node.hostname=="+w1.Name,
				"--publish", fmt.Sprintf("mode=host,%d:80", freePort(t)), "--progress", "plain", "--timeout", "90s")
			if r.code != 3 {
				t.Errorf("exit %d, want 3 (rollout failed)", r.code)
			}
			if !strings.Contains(r.err, adv) || !strings.Contains(r.err, "rollout failed") {
				t.Errorf("stderr does not say that the rollout from %s failed", adv)
			}
			secretsShown(t, r.out, r.err)
		})

		t.Run("forwarded", func(t *testing.T) {
			svc := "wcred-" + id
			removeService(t, docker, svc)
			dc, prog := client(t, adv)
			res, err := dc.Deploy(t.Context(), spec(svc), deploy.DeployOptions{Timeout: 90 * time.Second})
			t.Logf("progress:\n%s", prog)
			if err != nil {
				t.Fatalf("Deploy with forwarded credentials: %v", err)
			}
			if res.Tasks != 1 || res.Image != ref {
				t.Errorf("result: %d tasks of %s, want 1 of %s", res.Tasks, res.Image, ref)
			}
			if got := get(t, fmt.Sprintf("http://%s:%d/", w1.IP, p)); got != page {
				t.Errorf("GET from worker %s = %q, want %q", w1.Name, got, page)
			}
			if c := containers(t, docker, w1, svc); len(c) != 1 || c[0] != ref {
				t.Errorf("worker %s runs %v, want one task of %s", w1.Name, c, ref)
			}
			secretsShown(t, prog.String())
		})
	})

	t.Run("rolling update and rollback", func(t *testing.T) {
		svc := "wroll-" + id
		removeService(t, docker, svc)
		p := freePort(t)
		dc, prog := client(t, adv)
		opts := deploy.DeployOptions{Timeout: 2 * time.Minute}
		// One host port per node: swarm places the two replicas on the two workers.
		_, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: blueRef, Replicas: &two,
			Constraints: onWorkers, Ports: hostPort(p), Update: fast, Rollback: fast}, opts)
		if err != nil {
			t.Fatalf("deploy blue: %v\n%s", err, prog)
		}
		onEveryWorker(t, docker, workers, svc, blueRef, p, "blue "+id+"\n")

		prog.Reset()
		res, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: greenRef}, opts)
		t.Logf("green progress:\n%s", prog)
		if err != nil {
			t.Fatalf("deploy green: %v", err)
		}
		if res.Tasks != 2 {
			t.Errorf("green: %d tasks run it, want 2", res.Tasks)
		}
		for _, slot := range []int{1, 2} {
			if prog.index(taskRunning(svc, slot, "", green)) < 0 {
				t.Errorf("green progress has no event: slot %d running %s", slot, green[:19])
			}
		}
		onEveryWorker(t, docker, workers, svc, greenRef, p, "green "+id+"\n")
		statusOnWorkers(t, dc, svc, workers, green, "green")

		prog.Reset()
		if _, err := dc.Rollback(t.Context(), svc, opts); err != nil {
			t.Fatalf("rollback: %v\n%s", err, prog)
		}
		t.Logf("rollback progress:\n%s", prog)
		for _, slot := range []int{1, 2} {
			if prog.index(taskRunning(svc, slot, "", blue)) < 0 {
				t.Errorf("rollback progress has no event: slot %d running %s", slot, blue[:19])
			}
		}
		onEveryWorker(t, docker, workers, svc, blueRef, p, "blue "+id+"\n")
		statusOnWorkers(t, dc, svc, workers, blue, "blue")
		secretsShown(t, prog.String())
	})

	t.Run("prepull", func(t *testing.T) {
		svc := "wpre-" + id
		removeService(t, docker, svc)
		p := freePort(t)
		dc, prog := client(t, adv)
		opts := deploy.DeployOptions{Timeout: 2 * time.Minute}
		pre := img("pre", "v2", "prepulled "+id+"\n") // new on both workers
		_, preDigest, _ := strings.Cut(pre, "@")
		if _, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: blueRef, Replicas: &two,
			Constraints: onWorkers, Ports: hostPort(p), Update: fast}, opts); err != nil {
			t.Fatalf("deploy blue: %v\n%s", err, prog)
		}
		prog.Reset()
		opts.Prepull = true
		opts.Timeout = 3 * time.Minute // bounds the prepull and the rollout together
		_, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: pre}, opts)
		t.Logf("prepull progress:\n%s", prog)
		if err != nil {
			t.Fatalf("deploy with prepull: %v", err)
		}
		// Every eligible node reported its pull, with a duration, before the
		// first task of the new image showed up in the rollout.
		events := prog.all()
		firstTask := prog.index(func(p deploy.Progress) bool {
			return p.Stage == deploy.StageTask && strings.HasSuffix(p.Image, "@"+preDigest)
		})
		if firstTask < 0 {
			firstTask = len(events)
		}
		for _, w := range workers {
			found := false
			for _, p := range events[:firstTask] {
				if p.Stage == deploy.StagePrepull && p.Node == w.Name && p.Err == "" && p.Took > 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("no pull time for worker %s before the rolling update", w.Name)
			}
		}
		onEveryWorker(t, docker, workers, svc, pre, p, "prepulled "+id+"\n")
	})

	// A paced prepull (PrepullParallelism 1 over the two workers) is
	// swarm's replicated job, one node at a time: both workers pull, the
	// summary names them, and the job is gone afterwards.
	t.Run("prepull paced", func(t *testing.T) {
		svc := "wpace-" + id
		removeService(t, docker, svc)
		p := freePort(t)
		dc, prog := client(t, adv)
		opts := deploy.DeployOptions{Timeout: 2 * time.Minute}
		pre := img("pace", "v2", "paced "+id+"\n") // new on both workers
		if _, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: blueRef, Replicas: &two,
			Constraints: onWorkers, Ports: hostPort(p), Update: fast}, opts); err != nil {
			t.Fatalf("deploy blue: %v\n%s", err, prog)
		}
		prog.Reset()
		opts.Prepull, opts.PrepullParallelism = true, 1
		opts.Timeout = 3 * time.Minute
		_, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: pre}, opts)
		t.Logf("paced prepull progress:\n%s", prog)
		if err != nil {
			t.Fatalf("deploy with a paced prepull: %v", err)
		}
		if prog.index(func(p deploy.Progress) bool {
			return p.Stage == deploy.StagePrepull && strings.Contains(p.Message, "2 eligible nodes pull") && strings.Contains(p.Message, "at most 1 at once")
		}) < 0 {
			t.Error("no event says 2 eligible nodes pull, at most 1 at once")
		}
		for _, w := range workers {
			if prog.index(func(p deploy.Progress) bool {
				return p.Stage == deploy.StagePrepull && p.Node == w.Name && p.Err == "" && p.Took > 0
			}) < 0 {
				t.Errorf("no pull time for worker %s", w.Name)
			}
		}
		if prog.index(func(p deploy.Progress) bool {
			return p.Stage == deploy.StagePrepull && strings.HasPrefix(p.Message, "2 node(s) pulled in ")
		}) < 0 {
			t.Error("no summary: 2 node(s) pulled in ...")
		}
		out, _ := exec.Command(docker, "service", "ls", "-q", "--filter", "label=labreg.prepull="+svc).Output()
		if len(strings.TrimSpace(string(out))) != 0 {
			t.Errorf("prepull job left behind: %s", out)
		}
		onEveryWorker(t, docker, workers, svc, pre, p, "paced "+id+"\n")
	})

	t.Run("global", func(t *testing.T) {
		svc := "wglobal-" + id
		removeService(t, docker, svc)
		p := freePort(t)
		dc, prog := client(t, adv)
		// A delay between nodes longer than the monitor: a watch that only
		// counts updated nodes would report convergence after the first.
		slow := deploy.UpdatePolicy{Parallelism: &one, Delay: ptr(2 * time.Second), Monitor: 300 * time.Millisecond}
		res, err := dc.Deploy(t.Context(), deploy.Spec{Name: svc, Image: blueRef, Mode: "global",
			Constraints: onWorkers, Ports: hostPort(p), Update: slow}, deploy.DeployOptions{Timeout: 2 * time.Minute})
		t.Logf("progress:\n%s", prog)
		if err != nil {
			t.Fatalf("deploy global blue: %v", err)
		}
		if res.Tasks != 2 {
			t.Errorf("global blue: %d tasks, want one per worker (2)", res.Tasks)
		}
		for _, w := range workers {
			if prog.index(taskRunning(svc, 0, w.Name, blue)) < 0 {
				t.Errorf("progress has no line for node %s running %s", w.Name, blue[:19])
			}
		}
		onEveryWorker(t, docker, workers, svc, blueRef, p, "blue "+id+"\n")

		// The update through the CLI, as a user types it.
		r := labreg(t, []string{"DOCKER_CONFIG=" + dockerCfg}, "deploy", svc, "--image", greenRef,
			"--advertise", adv, "--constraint", onWorkers[0], "--constraint", onWorkers[1], "--progress", "plain")
		if r.code != 0 {
			t.Fatalf("labreg deploy green: exit %d", r.code)
		}
		for _, w := range workers {
			if !progressLine(r.err, svc, w.Name, "running", green) {
				t.Errorf("labreg deploy: stderr has no line for node %s running %s", w.Name, green[:19])
			}
		}
		if !strings.Contains(r.out, greenRef) || !strings.Contains(r.out, "2 tasks running") {
			t.Errorf("labreg deploy: stdout does not say that 2 tasks run %s", greenRef)
		}
		onEveryWorker(t, docker, workers, svc, greenRef, p, "green "+id+"\n")
		secretsShown(t, r.out, r.err, prog.String())
	})
}

// client is a deploy client for the registry advertised at adv whose
// progress events go to the returned recorder.
func client(t testing.TB, adv string) (*deploy.Client, *recorder) {
	t.Helper()
	prog := &recorder{}
	dc, err := deploy.New(deploy.Options{Registry: adv, OnProgress: prog.on})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	return dc, prog
}

// progressLine reports whether labreg's progress output has a line
// "SVC ID: STATE DIGEST…" (ID "slot 2" or a node name) with the short
// digest of digest.
func progressLine(progress, svc, id, state, digest string) bool {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(svc+" "+id+": "+state) + `\s+` + regexp.QuoteMeta(digest[:19]))
	return re.MatchString(progress)
}

// containers lists the images of svc's running containers on node n, as
// the node's own engine sees them.
func containers(t testing.TB, docker string, n *testenv.Node, svc string) []string {
	t.Helper()
	out, err := exec.Command(docker, "-H", n.Socket, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc).CombinedOutput()
	if err != nil {
		t.Fatalf("docker ps on %s: %v: %s", n.Name, err, out)
	}
	ids := strings.Fields(string(out))
	if len(ids) == 0 {
		return nil
	}
	// .Config.Image is the task's image as the engine ran it, digest included.
	out, err = exec.Command(docker, append([]string{"-H", n.Socket, "inspect", "--format", "{{.Config.Image}}"}, ids...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect on %s: %v: %s", n.Name, err, out)
	}
	return strings.Fields(string(out))
}

// onEveryWorker checks that each worker's engine runs exactly one task of
// svc, with image ref, and that its host-mode port serves page.
func onEveryWorker(t testing.TB, docker string, workers []*testenv.Node, svc, ref string, port int, page string) {
	t.Helper()
	for _, w := range workers {
		if c := containers(t, docker, w, svc); len(c) != 1 || c[0] != ref {
			t.Errorf("worker %s runs %v, want one task of %s", w.Name, c, ref)
		}
		if got := get(t, fmt.Sprintf("http://%s:%d/", w.IP, port)); got != page {
			t.Errorf("GET from worker %s = %q, want %q", w.Name, got, page)
		}
	}
}

// statusOnWorkers checks what `labreg status SVC` shows: on each worker
// one running task of svc with digest, and the registry tag of that digest.
func statusOnWorkers(t testing.TB, dc *deploy.Client, svc string, workers []*testenv.Node, digest, tag string) {
	t.Helper()
	st, err := dc.Status(t.Context(), svc)
	if err != nil {
		t.Fatalf("status %s: %v", svc, err)
	}
	if len(st.Services) != 1 {
		t.Fatalf("status %s: %d services", svc, len(st.Services))
	}
	ss := st.Services[0]
	for _, w := range workers {
		n := 0
		for _, task := range ss.Tasks {
			if task.Node == w.Name && task.State == "running" && task.DesiredState == "running" {
				n++
				if task.Digest != digest {
					t.Errorf("status: the task on %s runs %s, want %s", w.Name, task.Digest, digest)
				}
			}
		}
		if n != 1 {
			t.Errorf("status: %d running tasks on %s, want 1", n, w.Name)
		}
	}
	if tags := ss.Digests[digest]; !slices.Contains(tags, tag) {
		t.Errorf("status: digest %s has tags %v (%s), want %q", digest, tags, ss.TagErr, tag)
	}
	if ss.Running != len(workers) {
		t.Errorf("status: %d running, want %d", ss.Running, len(workers))
	}
}

func ptr[T any](v T) *T { return &v }
