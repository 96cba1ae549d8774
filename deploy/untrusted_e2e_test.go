package deploy_test

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestWorkerUntrustedRegistry: a worker that does not trust the registry
// (plain HTTP at an address outside its insecure-registries) cannot pull.
// Swarm reports only "No such image" (the engine logs the real error on
// the node); labreg's error must name the worker and say "not trusted",
// not blame credentials, on both paths that report a pull failure: the
// rollout and --prepull.
func TestWorkerUntrustedRegistry(t *testing.T) {
	testenv.Swarm(t)
	port, _ := testenv.WorkerRegistry(t, registry.Options{})
	w := testenv.Worker(t, "untrust")
	host := untrustedHostIP(t)
	id := suffix(t)
	d := pageImage(t, "127.0.0.1:"+port+"/untrusted:"+id, nil, "untrusted "+id+"\n")
	// The worker reaches the host's own address through its link, but
	// trusts only testenv.WorkerSubnet over plain HTTP.
	adv := net.JoinHostPort(host, port)
	ref := adv + "/untrusted:" + id + "@" + d
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, adv, "", "")}
	// The control: the worker's own engine says why it cannot pull.
	pull := exec.Command(testenv.Swarm(t), "-H", w.Socket, "pull", ref)
	pull.Env = append(os.Environ(), env...)
	if out, err := pull.CombinedOutput(); err == nil || !strings.Contains(string(out), "HTTP response to HTTPS client") {
		t.Fatalf("worker %s pulling %s: %v: %s; want it to refuse plain HTTP", w.Name, ref, err, out)
	}
	for _, tc := range []struct{ name, svc string }{{"rollout", "untrust-" + id}, {"prepull", "untrustpre-" + id}} {
		t.Run(tc.name, func(t *testing.T) {
			docker := testenv.Swarm(t)
			removeService(t, docker, tc.svc)
			args := []string{"deploy", tc.svc, "--image", ref, "--advertise", adv, "--progress", "plain",
				"--constraint", "node.id==" + w.ID, "--timeout", "3m"}
			if tc.name == "prepull" {
				args = append(args, "--prepull")
			}
			r := labreg(t, env, args...)
			if r.code != 3 {
				t.Errorf("exit %d, want 3", r.code)
			}
			msg := lastLine(r.err)
			for _, want := range []string{w.Name, "not trusted", "insecure-registries"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the error does not say %q", want)
				}
			}
			if strings.Contains(msg, "credential") || strings.Contains(msg, "docker login") {
				t.Errorf("the error blames credentials")
			}
		})
	}
}

// untrustedHostIP is an IPv4 address of this host outside
// testenv.WorkerSubnet (so workers do not trust a registry there).
func untrustedHostIP(t *testing.T) string {
	t.Helper()
	_, workers, _ := net.ParseCIDR(testenv.WorkerSubnet)
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !workers.Contains(n.IP) {
			return n.IP.String()
		}
	}
	t.Fatal("this host has no IPv4 address outside " + testenv.WorkerSubnet)
	return ""
}
