package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labreg/labreg/registry"
)

// Lab is the course's four nodes on this machine: a manager and worker1..3,
// each a dockerd in its own network namespace with its own daemon config,
// in a swarm of their own (not the default engine's), with the quiz's node
// labels:
//
//	         worker1  worker2  worker3
//	zone     seoul    seoul    busan
//	srv      web      nfs      web
//
// The swarm is advertised on the manager's own address (never 127.0.0.1),
// so a worker whose dockerd restarts rejoins. A labreg registry runs in this
// process on every address; Registry is the address every node reaches and
// trusts (each node's daemon.json lists LabSubnet as insecure, the lab's
// insecure-registries), Local the one the test pushes through. Overlay
// traffic between the nodes crosses the host's FORWARD chain: a DOCKER-USER
// accept rule for LabSubnet is added while the lab runs. Everything is
// removed when the test ends, also when it fails half-way.
type Lab struct {
	Manager *Node
	Workers []*Node // worker1, worker2, worker3
	// Registry is HOST:PORT of the registry as every node reaches it.
	Registry string
	// Local is 127.0.0.1:PORT of the same registry, for pushes from here.
	Local string
	// Server is the registry.
	Server *registry.Server
	// Env is DOCKER_HOST=<the manager's engine>, for labreg and docker CLI
	// runs against the lab's swarm.
	Env []string
}

// LabSubnet holds every Lab node's address; Lab nodes trust registries in
// it over plain HTTP.
const LabSubnet = WorkerSubnet

// LabLabels are the quiz's node labels, by worker name.
var LabLabels = map[string]map[string]string{
	"worker1": {"zone": "seoul", "srv": "web"},
	"worker2": {"zone": "seoul", "srv": "nfs"},
	"worker3": {"zone": "busan", "srv": "web"},
}

var labRule sync.Mutex

// NewLab starts the four nodes and the registry (opts as for Registry) and
// returns when every worker is ready and labelled. It takes about as long
// as four dockerd starts. Lab nodes never join the default engine's swarm,
// so NewLab needs no swarm lock.
func NewLab(t testing.TB, opts registry.Options) *Lab {
	t.Helper()
	Docker(t)
	port, srv := WorkerRegistry(t, opts)
	lab := startLab(t, false)
	lab.Server, lab.Local, lab.Registry = srv, "127.0.0.1:"+port, lab.Manager.HostIP+":"+port
	return lab
}

// startLab starts the four nodes (each with its own hosts file when
// ownHosts) in a swarm of their own and returns when every worker is ready
// and labelled; the registry fields are the caller's to fill.
func startLab(t testing.TB, ownHosts bool) *Lab {
	t.Helper()
	for _, tool := range []string{"ip", "nsenter", "unshare", "dockerd", "iptables", "mount"} {
		Tool(t, tool, "apt-get install iproute2 util-linux mount docker.io iptables")
	}
	lab := &Lab{}
	allowOverlay(t)
	base := int(workerSeq.Add(4)) + os.Getpid()%200
	names := []string{"manager", "worker1", "worker2", "worker3"}
	nodes := make([]*Node, len(names))
	var wg sync.WaitGroup
	errs := make([]any, len(names))
	for i, name := range names {
		wg.Add(1)
		go func() { // the dockerds start in parallel: startNode's t.Fatal is caught below
			defer wg.Done()
			defer func() { errs[i] = recover() }()
			nodes[i] = startNodeErr(name, base+i, []string{LabSubnet}, ownHosts)
		}()
	}
	wg.Wait()
	for i := range names {
		if n := nodes[i]; n != nil {
			t.Cleanup(n.stop)
		}
	}
	for i, e := range errs {
		if e != nil {
			t.Fatalf("lab node %s: %v", names[i], e)
		}
	}
	lab.Manager, lab.Workers = nodes[0], nodes[1:]
	m := lab.Manager
	lab.Env = []string{"DOCKER_HOST=" + m.Socket}
	if out, err := m.docker("swarm", "init", "--advertise-addr", m.IP); err != nil {
		t.Fatalf("lab manager: swarm init: %v: %s", err, out)
	}
	token, err := m.docker("swarm", "join-token", "-q", "worker")
	if err != nil {
		t.Fatalf("lab manager: join-token: %v: %s", err, token)
	}
	for _, w := range lab.Workers {
		if out, err := w.docker("swarm", "join", "--token", token, "--advertise-addr", w.IP, m.IP+":2377"); err != nil {
			t.Fatalf("lab %s: swarm join: %v: %s", w.Name, err, out)
		}
		if w.ID, err = w.docker("info", "--format", "{{.Swarm.NodeID}}"); err != nil || w.ID == "" {
			t.Fatalf("lab %s: swarm node ID: %v %s", w.Name, err, w.ID)
		}
	}
	if m.ID, err = m.docker("info", "--format", "{{.Swarm.NodeID}}"); err != nil {
		t.Fatalf("lab manager: node ID: %v", err)
	}
	for _, w := range lab.Workers {
		waitReady(t, "docker", m.Socket, w.ID, w.Name, 60*time.Second)
		args := []string{"node", "update"}
		for k, v := range LabLabels[w.Name] {
			args = append(args, "--label-add", k+"="+v)
		}
		if out, err := m.docker(append(args, w.ID)...); err != nil {
			t.Fatalf("labelling %s: %v: %s", w.Name, err, out)
		}
	}
	return lab
}

// Worker returns the worker named name ("worker1").
func (l *Lab) Worker(name string) *Node {
	for _, w := range l.Workers {
		if w.Name == name {
			return w
		}
	}
	return nil
}

// Docker runs the docker CLI against the lab's manager.
func (l *Lab) Docker(args ...string) (string, error) { return l.Manager.docker(args...) }

// NodeDocker runs the docker CLI against node n's own engine.
func (n *Node) Docker(args ...string) (string, error) { return n.docker(args...) }

// startNodeErr is startNode for a goroutine: failures panic with the
// error, for NewLab to report.
func startNodeErr(name string, n int, insecure []string, ownHosts bool) *Node {
	ft := &fatalT{}
	var node *Node
	func() {
		defer func() {
			if r := recover(); r != nil && r != errFatal {
				panic(r)
			}
		}()
		node = startNode(ft, name, n, insecure, ownHosts)
	}()
	if ft.msg != "" {
		panic(ft.msg)
	}
	return node
}

var errFatal = fmt.Errorf("fatal")

// fatalT lets startNode run outside the test goroutine: Fatal records the
// message and unwinds instead of calling runtime.Goexit on the wrong
// goroutine.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper()                   {}
func (f *fatalT) Fatal(args ...any)         { f.msg = fmt.Sprint(args...); panic(errFatal) }
func (f *fatalT) Fatalf(s string, a ...any) { f.msg = fmt.Sprintf(s, a...); panic(errFatal) }
func (f *fatalT) Skipf(s string, a ...any)  { f.msg = fmt.Sprintf(s, a...); panic(errFatal) }
func (f *fatalT) Logf(string, ...any)       {}

// allowOverlay inserts a DOCKER-USER rule accepting traffic between lab
// addresses (VXLAN, gossip, published ports), which the host's FORWARD
// policy (DROP, set by the host's dockerd) would silently drop, and removes
// it when the test ends.
func allowOverlay(t testing.TB) {
	t.Helper()
	labRule.Lock()
	defer labRule.Unlock()
	rule := []string{"DOCKER-USER", "-s", LabSubnet, "-d", LabSubnet, "-m", "comment", "--comment", "labreg-test-lab", "-j", "ACCEPT"}
	if exec.Command("iptables", append([]string{"-C"}, rule...)...).Run() == nil {
		return // another lab of this machine (or a killed run) has it: theirs to remove
	}
	if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "No chain") {
			t.Logf("testenv: no DOCKER-USER chain (the host's dockerd manages no iptables): overlay traffic not adjusted")
			return
		}
		t.Fatalf("iptables -I %s: %v: %s", strings.Join(rule, " "), err, out)
	}
	t.Cleanup(func() {
		labRule.Lock()
		defer labRule.Unlock()
		exec.Command("iptables", append([]string{"-D"}, rule...)...).Run()
	})
}
