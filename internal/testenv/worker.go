package testenv

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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
	// Hosts is the node's own /etc/hosts (see SetHosts), "" when its
	// dockerd sees the host's.
	Hosts string

	n          int // number of its netns labreg-w<n>
	ns, dir    string
	dockerd    *exec.Cmd
	exited     chan struct{} // closed when dockerd has exited
	logf       *os.File
	cleanupNet func()
}

var workerSeq atomic.Int32

// WorkerSubnet is the range worker links are made in; workers trust every
// registry in it over plain HTTP (--insecure-registry), as the lab's
// daemon.json does for the manager's address.
const WorkerSubnet = "10.213.0.0/16"

// Worker starts a dockerd in a new network namespace (veth link to the
// host, own data-root/exec-root/socket/pidfile and daemon config file, own
// hostname via unshare --uts), joins it to the default engine's swarm as a
// worker, and removes it from the swarm and stops it when the test ends.
// It trusts every registry in WorkerSubnet over plain HTTP.
//
// Use it only in tests that run alone against the swarm (no t.Parallel):
// while it is joined, the scheduler may place any service's tasks on it.
// Other test binaries' SwarmServices wait until it has left.
func Worker(t testing.TB, name string) *Node {
	t.Helper()
	docker := Swarm(t)
	lockSwarm(t, syscall.LOCK_EX) // no unconstrained services while joined (see SwarmServices)
	removeStaleWorkers(t, docker) // left by a killed earlier run
	n := int(workerSeq.Add(1)) + os.Getpid()%200
	node := startNode(t, fmt.Sprintf("%s-%d", name, n), n, []string{WorkerSubnet}, false)
	leave := func() {
		node.docker("swarm", "leave", "--force")
		id := node.ID
		if id == "" {
			id = node.Name // join failed half-way
		}
		exec.Command(docker, "node", "rm", "--force", id).Run()
	}
	token, err := exec.Command(docker, "swarm", "join-token", "-q", "worker").Output()
	if err != nil {
		node.stop()
		t.Fatalf("swarm join-token: %v", err)
	}
	if out, err := node.docker("swarm", "join", "--token", strings.TrimSpace(string(token)),
		"--advertise-addr", node.IP, node.HostIP+":2377"); err != nil {
		leave()
		node.stop()
		t.Fatalf("worker join: %v: %s", err, out)
	}
	t.Cleanup(func() { leave(); node.stop() })
	// By ID: a stale node of a killed run may have had the same name.
	if node.ID, err = node.docker("info", "--format", "{{.Swarm.NodeID}}"); err != nil || node.ID == "" {
		t.Fatalf("worker %s: swarm node ID: %v %s", node.Name, err, node.ID)
	}
	// The manager listens on every address (swarm's default listen-addr),
	// so the host's end of the link reaches it whatever it advertises.
	// Wait until the manager sees the worker ready.
	waitReady(t, docker, "", node.ID, node.Name, 60*time.Second)
	return node
}

// waitReady waits until the manager (docker CLI with host "" for the
// default engine, else -H host) sees node id ready.
func waitReady(t testing.TB, docker, host, id, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	args := []string{"node", "inspect", id, "--format", "{{.Status.State}}"}
	if host != "" {
		args = append([]string{"-H", host}, args...)
	}
	for time.Now().Before(deadline) {
		out, _ := exec.Command(docker, args...).Output()
		if strings.TrimSpace(string(out)) == "ready" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("node %s never became ready", name)
}

// startNode starts a dockerd named name in a new network namespace
// labreg-w<n> (veth lrw<n>h/lrw<n>n, addresses 10.213.<n%250>.1 and .2/24)
// with its own daemon config file (see daemonConfig) trusting insecure,
// and waits until it answers. The caller stops it with node.stop.
//
// With ownHosts the node's dockerd resolves names through a hosts file of
// its own (Node.Hosts, at first a copy of the host's /etc/hosts; see
// SetHosts).
func startNode(t testing.TB, name string, n int, insecure []string, ownHosts bool) *Node {
	t.Helper()
	for _, tool := range []string{"ip", "nsenter", "unshare", "dockerd", "docker"} {
		Tool(t, tool, "apt-get install iproute2 util-linux docker.io")
	}
	ns := fmt.Sprintf("labreg-w%d", n)
	hostIf, nodeIf := fmt.Sprintf("lrw%dh", n), fmt.Sprintf("lrw%dn", n)
	node := &Node{
		Name:   name,
		HostIP: fmt.Sprintf("10.213.%d.1", n%250),
		IP:     fmt.Sprintf("10.213.%d.2", n%250),
		ns:     ns,
	}
	dir, err := os.MkdirTemp("", "labreg-worker-")
	if err != nil {
		t.Fatal(err)
	}
	node.dir = dir
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
	node.cleanupNet = cleanupNet
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
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	if ownHosts {
		node.Hosts = filepath.Join(dir, "hosts")
		if err := node.SetHosts(nil); err != nil {
			cleanupNet()
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	if err := node.start(insecure); err != nil {
		node.stop()
		t.Fatal(err)
	}
	liveWorkers.Store(n, true)
	node.n = n
	return node
}

// daemonConfig is the node's own daemon.json (dockerd --config-file), so
// that the host's /etc/docker/daemon.json never applies to it.
func (n *Node) daemonConfig(insecure []string) (string, error) {
	p := filepath.Join(n.dir, "daemon.json")
	b, _ := json.Marshal(map[string]any{"insecure-registries": insecure})
	return p, os.WriteFile(p, b, 0o644)
}

// start runs the node's dockerd with insecure as its insecure registries
// and waits up to 60s until it answers.
func (n *Node) start(insecure []string) error {
	cfg, err := n.daemonConfig(insecure)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(n.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// With its own /etc/hosts the dockerd runs in a mount namespace of its
	// own (private propagation: neither the bind mount nor any mount the
	// dockerd makes reaches the host's) where the node's hosts file is
	// bind-mounted over /etc/hosts.
	unshare, script := []string{"unshare", "--uts"}, `hostname "$0" && exec "$@"`
	if n.Hosts != "" {
		unshare = append(unshare, "--mount", "--propagation", "private")
		script = `mount --bind "$LABREG_NODE_HOSTS" /etc/hosts && ` + script
	}
	cmd := exec.Command("nsenter", append(append([]string{"--net=/run/netns/" + n.ns}, unshare...), "--",
		"sh", "-c", script, n.Name,
		"dockerd", "--config-file", cfg, "--data-root", filepath.Join(n.dir, "data"), "--exec-root", filepath.Join(n.dir, "exec"),
		"-H", n.Socket, "--pidfile", filepath.Join(n.dir, "docker.pid"))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if n.Hosts != "" {
		cmd.Env = append(os.Environ(), "LABREG_NODE_HOSTS="+n.Hosts)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	n.dockerd, n.logf = cmd, logf
	n.exited = make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(n.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := n.docker("info"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(n.dir, "dockerd.log"))
			return fmt.Errorf("dockerd of %s did not start:\n%s", n.Name, tail(string(log), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// SetHosts rewrites the node's own hosts file (Node.Hosts; an error when it
// has none): the host's /etc/hosts followed by one "IP NAME" line per entry
// of names. It writes the file in place, so the node's bind mount sees it
// at once; its dockerd re-reads it on its next lookup.
func (n *Node) SetHosts(names map[string]string) error {
	if n.Hosts == "" {
		return fmt.Errorf("node %s has no hosts file of its own", n.Name)
	}
	base, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return err
	}
	var b strings.Builder
	b.Write(base)
	if len(base) > 0 && base[len(base)-1] != '\n' {
		b.WriteByte('\n')
	}
	keys := make([]string, 0, len(names))
	for k := range names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, name := range keys {
		fmt.Fprintf(&b, "%s %s\n", names[name], name)
	}
	f, err := os.OpenFile(n.Hosts, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WithHosts is the command line that runs args (a command and its
// arguments) on this host with the node's own /etc/hosts, as a process on
// the node resolves names (in a private mount namespace of its own, like
// the node's dockerd; the host's network). It is args itself when the node
// has no hosts file of its own.
func (n *Node) WithHosts(args ...string) []string {
	if n.Hosts == "" {
		return args
	}
	return append([]string{"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, n.Hosts}, args...)
}

// docker runs the docker CLI against the node's engine.
func (n *Node) docker(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", n.Socket}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// stopDockerd stops the node's dockerd (SIGTERM, then SIGKILL after 20s).
func (n *Node) stopDockerd() {
	if n.dockerd == nil {
		return
	}
	n.dockerd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		n.dockerd.Process.Kill()
		<-n.exited
	}
	n.logf.Close()
	n.dockerd = nil
}

// stop stops the dockerd and removes the node's netns, veth and files.
func (n *Node) stop() {
	n.stopDockerd()
	n.cleanupNet()
	exec.Command("sh", "-c", "umount -R "+filepath.Join(n.dir, "exec")+" 2>/dev/null; umount -R "+filepath.Join(n.dir, "data")+" 2>/dev/null").Run()
	os.RemoveAll(n.dir)
	if n.n != 0 {
		liveWorkers.Delete(n.n)
	}
}

// Restart stops the node's dockerd and starts it again with insecure as its
// insecure registries (nil: none), as an operator who edits daemon.json and
// runs `systemctl restart docker` does. The node keeps its swarm state and
// rejoins through the manager's advertised address; Restart returns once
// the manager (docker CLI -H managerHost, "" for the default engine) sees
// it ready again.
func (n *Node) Restart(t testing.TB, managerHost string, insecure []string) {
	t.Helper()
	n.stopDockerd()
	if err := n.start(insecure); err != nil {
		t.Fatal(err)
	}
	waitReady(t, "docker", managerHost, n.ID, n.Name, 90*time.Second)
}

// Crash stops the node's dockerd without leaving the swarm, as a crashed
// machine or a killed test run does: the manager marks the node down once
// its heartbeats stop (10-20 s here). The test's cleanup still removes it.
func (n *Node) Crash() error {
	if n.dockerd == nil {
		return fmt.Errorf("the dockerd of %s is not running", n.Name)
	}
	n.stopDockerd()
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
	addr, srv, _ := startRegistry(t, opts, "0.0.0.0:0")
	_, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return port, srv
}
