package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/labreg/labreg/registry"
)

// Node is an extra swarm worker: a second dockerd in its own network
// namespace, joined to the swarm of the default engine.
type Node struct {
	Name   string // hostname and swarm node name
	IP     string // the node's address, reachable from the host
	HostIP string // the host's end of the link, reachable from the node
	Socket string // DOCKER_HOST of the node's engine, e.g. unix:///…/docker.sock
	ID     string // swarm node ID

	dockerd *exec.Cmd
}

var workerSeq atomic.Int32

// WorkerSubnet is the range worker links are made in; workers trust every
// registry in it over plain HTTP (--insecure-registry), as the lab's
// daemon.json does for the manager's address.
const WorkerSubnet = "10.213.0.0/16"

// Worker starts a dockerd in a new network namespace (veth link to the
// host, own data-root/exec-root/socket/pidfile, own hostname via unshare
// --uts), joins it to the default engine's swarm as a worker, and removes
// it from the swarm and stops it when the test ends.
//
// Use it only in tests that run alone against the swarm (no t.Parallel):
// while it is joined, the scheduler may place any service's tasks on it.
// Other test binaries' SwarmServices wait until it has left.
func Worker(t testing.TB, name string) *Node {
	t.Helper()
	docker := Swarm(t)
	lockSwarm(t, syscall.LOCK_EX) // no unconstrained services while joined (see SwarmServices)
	for _, tool := range []string{"ip", "nsenter", "unshare", "dockerd"} {
		Tool(t, tool, "apt-get install iproute2 util-linux docker.io")
	}
	removeStaleWorkers(t, docker) // left by a killed earlier run
	n := int(workerSeq.Add(1)) + os.Getpid()%200
	ns := fmt.Sprintf("labreg-w%d", n)
	hostIf, nodeIf := fmt.Sprintf("lrw%dh", n), fmt.Sprintf("lrw%dn", n)
	node := &Node{
		Name:   fmt.Sprintf("%s-%d", name, n),
		HostIP: fmt.Sprintf("10.213.%d.1", n%250),
		IP:     fmt.Sprintf("10.213.%d.2", n%250),
	}
	dir, err := os.MkdirTemp("", "labreg-worker-")
	if err != nil {
		t.Fatal(err)
	}
	node.Socket = "unix://" + filepath.Join(dir, "docker.sock")
	sh := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	cleanupNet := func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", hostIf).Run()
	}
	cleanupNet()
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", nodeIf},
		{"ip", "link", "set", nodeIf, "netns", ns},
		{"ip", "addr", "add", node.HostIP + "/24", "dev", hostIf},
		{"ip", "link", "set", hostIf, "up"},
		{"ip", "-n", ns, "addr", "add", node.IP + "/24", "dev", nodeIf},
		{"ip", "-n", ns, "link", "set", nodeIf, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", node.HostIP},
	} {
		if err := sh(c...); err != nil {
			cleanupNet()
			t.Fatal(err)
		}
	}
	pidfile := filepath.Join(dir, "docker.pid")
	logf, _ := os.Create(filepath.Join(dir, "dockerd.log"))
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "unshare", "--uts", "--",
		"sh", "-c", `hostname "$0" && exec "$@"`, node.Name,
		"dockerd", "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"-H", node.Socket, "--pidfile", pidfile, "--insecure-registry", WorkerSubnet)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cleanupNet()
		t.Fatal(err)
	}
	ndocker := func(args ...string) (string, error) {
		out, err := exec.Command(docker, append([]string{"-H", node.Socket}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	node.dockerd = cmd
	liveWorkers.Store(n, true)
	stop := func() {
		ndocker("swarm", "leave", "--force")
		id := node.ID
		if id == "" {
			id = node.Name // join failed half-way
		}
		exec.Command(docker, "node", "rm", "--force", id).Run()
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		cleanupNet()
		exec.Command("sh", "-c", "umount -R "+filepath.Join(dir, "exec")+" 2>/dev/null; umount -R "+filepath.Join(dir, "data")+" 2>/dev/null").Run()
		os.RemoveAll(dir)
		liveWorkers.Delete(n)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := ndocker("info"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			stop()
			t.Fatalf("worker dockerd did not start:\n%s", tail(string(log), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	token, err := exec.Command(docker, "swarm", "join-token", "-q", "worker").Output()
	if err != nil {
		stop()
		t.Fatalf("swarm join-token: %v", err)
	}
	if out, err := ndocker("swarm", "join", "--token", strings.TrimSpace(string(token)),
		"--advertise-addr", node.IP, node.HostIP+":2377"); err != nil {
		stop()
		t.Fatalf("worker join: %v: %s", err, out)
	}
	t.Cleanup(stop)
	// By ID: a stale node of a killed run may have had the same name.
	if node.ID, err = ndocker("info", "--format", "{{.Swarm.NodeID}}"); err != nil || node.ID == "" {
		t.Fatalf("worker %s: swarm node ID: %v %s", node.Name, err, node.ID)
	}
	// The manager listens on every address (swarm's default listen-addr),
	// so the host's end of the link reaches it whatever it advertises.
	// Wait until the manager sees the worker ready.
	for time.Now().Before(deadline) {
		out, _ := exec.Command(docker, "node", "inspect", node.ID, "--format", "{{.Status.State}}").Output()
		if strings.TrimSpace(string(out)) == "ready" {
			return node
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("worker %s never became ready", node.Name)
	return nil
}

// Crash stops the node's dockerd without leaving the swarm, as a crashed
// machine or a killed test run does: the manager marks the node down once
// its heartbeats stop (10-20 s here). The test's cleanup still removes it.
func (n *Node) Crash() error {
	if err := n.dockerd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping the dockerd of %s: %w", n.Name, err)
	}
	n.dockerd.Wait()
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WorkerRegistry starts an in-process labreg registry like Registry, but
// listening on every address, so that worker nodes reach it at
// Node.HostIP:PORT while the host pushes through 127.0.0.1:PORT. It returns
// the PORT; the registry stops when the test ends.
func WorkerRegistry(t testing.TB, opts registry.Options) (string, *registry.Server) {
	t.Helper()
	addr, srv := startRegistry(t, opts, "0.0.0.0:0")
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return port, srv
}
