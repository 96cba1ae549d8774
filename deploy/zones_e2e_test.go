package deploy_test

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestZoneMirrors is issue #12's zone mirrors on real engines
// (testenv.NewZoneLab): the manager, two seoul workers and a busan worker
// all name the registry registry.lab:PORT, which each node's own
// /etc/hosts resolves to its zone's labreg mirror (the manager's to the
// origin).
//   - doctor names, per node, the address registry.lab resolves to there
//     and that it serves the probe's pinned digest;
//   - a paced prepull of blue (2 at a time) and a blue→green rollout of a
//     global service pull through the mirrors: each node's registry served
//     it every blob, and the origin sent each blob at most once per mirror
//     (and once to the manager);
//   - the busan mirror stopped while worker3 pulls red (its manifest
//     request is held until the mirror is gone, whatever the node order):
//     the deploy fails naming worker3 and why, the other nodes pulled red,
//     and the service still runs green; doctor then fails worker3, naming
//     it, and still says where the name leads on the others.
func TestZoneMirrors(t *testing.T) {
	z := testenv.NewZoneLab(t, registry.Options{})
	seoul, busan := z.Mirrors[testenv.ZoneSeoul], z.Mirrors[testenv.ZoneBusan]
	// the nodes' hosts files are theirs: nothing reaches this host's
	if b, err := os.ReadFile("/etc/hosts"); err != nil || strings.Contains(string(b), testenv.RegistryName) {
		t.Errorf("this host's /etc/hosts names %s (%v): a node's bind mount leaked", testenv.RegistryName, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range append([]*testenv.Node{z.Manager}, z.Workers...) {
		if n.Hosts == "" || strings.Contains(string(mounts), n.Hosts) {
			t.Errorf("%s: hosts file %q is not its own, or is mounted in this host's mount namespace", n.Name, n.Hosts)
		}
	}
	env := append(slices.Clone(z.Env), "LABREG_ADVERTISE="+z.Registry, "LABREG_REGISTRY="+z.Local,
		"DOCKER_CONFIG="+dockerConfig(t, "", "", ""), "XDG_RUNTIME_DIR="+t.TempDir())
	w1, w2, w3 := z.Worker("worker1"), z.Worker("worker2"), z.Worker("worker3")
	addrOf := func(r *testenv.LabRegistry) string { return strings.Split(r.Addr, ":")[0] }
	// labreg runs as on the manager: registry.lab is the origin there
	bin := testenv.BuildLabreg(t)
	labreg := func(env []string, args ...string) result {
		t.Helper()
		cmd := z.Manager.WithHosts(append([]string{bin}, args...)...)
		r := runLabreg(cmd[0], env, cmd[1:]...)
		if r.code == -1 {
			t.Fatalf("running labreg %v: %s", args, r.err)
		}
		t.Logf("labreg %s (exit %d, %s)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond), r.out, r.err)
		return r
	}

	// doctor: one line per node with the address registry.lab resolves to there
	r := labreg(env, "doctor", "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("labreg doctor: exit %d", r.code)
	}
	for n, reg := range map[*testenv.Node]*testenv.LabRegistry{z.Manager: z.Origin, w1: seoul, w2: seoul, w3: busan} {
		want := fmt.Sprintf("ok   node %s: %s resolves to %s there, which serves ", n.Name, testenv.RegistryName, addrOf(reg))
		if !strings.Contains(r.out, want) {
			t.Errorf("doctor's output has no line %q", want)
		}
	}

	blue := buildImage(t, map[string]string{"www/index.html": "blue"}, "/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")
	green := buildImage(t, map[string]string{"www/index.html": "green"}, "/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")
	red := buildImage(t, map[string]string{"www/index.html": "red"}, "/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")
	for tag, img := range map[string]v1.Image{"blue": blue, "green": green, "red": red} {
		testenv.Push(t, z.Local+"/web:"+tag, img)
	}
	deploy := func(tag string, extra ...string) result {
		t.Helper()
		return labreg(env, append([]string{"deploy", "web", "--image", "web:" + tag, "--mode", "global",
			"--update-parallelism", "0", "--update-monitor", "1s", "--progress", "plain", "--timeout", "2m"}, extra...)...)
	}
	// through checks that every node got every blob of img from its
	// zone's registry, and that the origin sent each at most once to each
	// mirror.
	through := func(what string, img v1.Image) {
		t.Helper()
		for _, d := range blobsOf(t, img) {
			path := "/v2/web/blobs/" + d
			for _, c := range []struct {
				reg             *testenv.LabRegistry
				via, who        string
				atLeast, atMost int
			}{
				{z.Origin, "nodes", "the origin to the manager", 1, 1},
				{seoul, "nodes", "the seoul mirror to worker1 and worker2", 2, 2},
				{busan, "nodes", "the busan mirror to worker3", 1, 1},
				{z.Origin, testenv.ZoneSeoul, "the origin to the seoul mirror", 0, 1},
				{z.Origin, testenv.ZoneBusan, "the origin to the busan mirror", 0, 1},
			} {
				if n := c.reg.Gets(c.via)[path]; n < c.atLeast || n > c.atMost {
					t.Errorf("%s: %s sent blob %s %d time(s), want %d to %d", what, c.who, d, n, c.atLeast, c.atMost)
				}
			}
		}
	}
	if r := deploy("blue", "--prepull", "--prepull-parallelism", "2"); r.code != 0 {
		t.Fatalf("deploy blue with a paced prepull: exit %d", r.code)
	} else if !strings.Contains(r.err, "4 eligible nodes pull") || !strings.Contains(r.err, "4 node(s) pulled in") {
		t.Errorf("deploy blue: no paced prepull of 4 nodes in its progress")
	}
	through("blue (paced prepull)", blue)
	if r := deploy("green"); r.code != 0 {
		t.Fatalf("blue→green rollout: exit %d", r.code)
	}
	through("green (rollout)", green)

	// The busan mirror goes away while worker3 pulls red: its request for
	// red's manifest is held until the mirror has stopped, so worker3
	// pulls mid-prepull whenever its turn comes.
	redDigest, err := red.Digest()
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	held := make(chan struct{})
	busan.OnRequest(func(req *http.Request) {
		if strings.HasSuffix(req.URL.Path, "/manifests/"+redDigest.String()) {
			once.Do(func() { close(held) })
			<-busan.Stopped()
		}
	})
	go func() {
		select {
		case <-held:
			t.Logf("worker3 asks the busan mirror for red's manifest: stopping the mirror")
			busan.Stop()
		case <-t.Context().Done():
		}
	}()
	r = deploy("red", "--prepull", "--prepull-parallelism", "1")
	if r.code == 0 {
		t.Fatal("deploy red with the busan mirror gone: exit 0")
	}
	select {
	case <-held:
	default:
		t.Fatal("worker3 never asked the busan mirror for red")
	}
	out := r.out + r.err
	for _, want := range []string{"1 node(s) could not pull: worker3", "3 node(s) pulled in ",
		"on worker3 the name registry.lab may lead elsewhere", "labreg doctor says where it leads on each node"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy red's output does not say %q", want)
		}
	}
	for _, n := range []*testenv.Node{z.Manager, w1, w2} {
		if _, err := n.Docker("image", "inspect", z.Registry+"/web@"+redDigest.String()); err != nil {
			t.Errorf("%s has no red image after the prepull: %v", n.Name, err)
		}
	}
	if got := z.Origin.Gets(testenv.ZoneSeoul)["/v2/web/manifests/"+redDigest.String()]; got != 1 {
		t.Errorf("the seoul mirror fetched red's manifest %d time(s) from the origin, want 1", got)
	}
	// doctor, with the busan mirror gone: worker3 still has the probe (the
	// same labreg, the same digest), runs it and says where the name leads
	// and why that fails there; the others still pass.
	doctorGone := func(want ...string) {
		t.Helper()
		r := labreg(env, "doctor", "--timeout", "2m")
		if r.code != 1 {
			t.Errorf("labreg doctor with the busan mirror gone: exit %d, want 1", r.code)
		}
		for _, n := range []*testenv.Node{z.Manager, w1, w2} {
			want = append(want, "ok   node "+n.Name+": registry.lab resolves to ")
		}
		for _, w := range want {
			if !strings.Contains(r.out, w) {
				t.Errorf("doctor's output does not say %q", w)
			}
		}
	}
	doctorGone("FAIL node worker3: registry.lab resolves to "+addrOf(busan)+" there, which does not serve labreg-doctor@sha256:",
		addrOf(busan)+": dial tcp "+busan.Addr+": connect: connection refused")
	// without the probe image worker3 cannot even pull it (its containers
	// of the removed probe job go first; swarm removes them in its own time)
	removeProbe := func() error {
		imgs, err := w3.Docker("image", "ls", "--format", "{{.Repository}} {{.ID}}")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(imgs, "\n") {
			repo, id, _ := strings.Cut(l, " ")
			if repo != z.Registry+"/labreg-doctor" {
				continue
			}
			if ids, _ := w3.Docker("ps", "-aq", "--filter", "ancestor="+id); ids != "" {
				w3.Docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
			}
			if out, err := w3.Docker("image", "rm", "-f", id); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
		}
		return nil
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		err := removeProbe()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("removing the probe image on worker3: %v", err)
		}
	}
	doctorGone("FAIL node worker3: cannot pull "+z.Registry+"/labreg-doctor:node-probe, so where registry.lab leads there is not known",
		"getent hosts registry.lab there")
	if img, err := z.Docker("service", "inspect", "web", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}"); err != nil ||
		strings.Contains(img, redDigest.String()) {
		t.Errorf("after the failed prepull the service runs %q (%v), want green still", img, err)
	}
}

// blobsOf is the config and layer digests of img.
func blobsOf(t testing.TB, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}
