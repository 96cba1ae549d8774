package testenv

import (
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"
)

// Redis starts a redis-server on 127.0.0.1 for this test (no persistence,
// stopped when the test ends) and returns its HOST:PORT. Without
// redis-server in PATH the test skips loudly, or fails under LABREG_E2E=1.
func Redis(t testing.TB) string {
	t.Helper()
	bin := Tool(t, "redis-server", "apt-get install redis-server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	var log Buffer
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", fmt.Sprint(addr.Port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = &log, &log
	exited, err := startChild(cmd)
	if err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err == nil {
			c.Close()
			return addr.String()
		}
		select {
		case <-exited:
			t.Fatalf("redis-server exited (%v): %s", cmd.ProcessState, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not listen on %s within 20s: %s", addr, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
