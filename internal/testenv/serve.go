package testenv

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer is a bytes.Buffer safe to write from a process or goroutine while
// the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written since the last Reset.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Reset empties the buffer.
func (b *Buffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.Reset()
}

// EnvWithout is this process's environment without the variables whose
// names start with prefix.
func EnvWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// ServeProcess is one `labreg serve` subprocess started by Serve.
type ServeProcess struct {
	Addr string // where the registry listens, HOST:PORT
	// UIAddr is where the web UI listens, HOST:PORT; "" without one
	// (Serve passes --ui-listen "" unless args give another).
	UIAddr string
	// RuntimeDir is the server's XDG_RUNTIME_DIR, a temp dir of the test,
	// where it records itself for the client commands (config.StateFile):
	// a client run with it finds this server, no other test's.
	RuntimeDir string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	stderr Buffer
}

// serveLine is the line `labreg serve` prints first on stdout.
var serveLine = regexp.MustCompile(`registry on https?://(\S+)`)

// uiLine is the web UI's address in that line.
var uiLine = regexp.MustCompile(`web UI on https?://([^,\s]+)`)

// Serve starts `labreg serve --listen 127.0.0.1:0 --ui-listen "" --data
// data` followed by args, from the binary BuildLabreg makes, with no
// LABREG_* variables of the caller's environment and XDG_RUNTIME_DIR set
// to RuntimeDir. data "" is a new temp
// dir. It returns once the server has said where it listens and /v2/
// answers there.
//
// When the test ends a server still running gets SIGINT and must exit
// within 20s, or the test fails; its stderr is logged if the test failed.
func Serve(t testing.TB, data string, args ...string) *ServeProcess {
	t.Helper()
	bin := BuildLabreg(t)
	if data == "" {
		data = t.TempDir()
	}
	args = append([]string{"serve", "--listen", "127.0.0.1:0", "--ui-listen", "", "--data", data}, args...)
	cmd := exec.Command(bin, args...)
	runtimeDir := t.TempDir()
	cmd.Env = append(EnvWithout("LABREG_"), "XDG_RUNTIME_DIR="+runtimeDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &ServeProcess{RuntimeDir: runtimeDir, cmd: cmd, exited: make(chan struct{})}
	cmd.Stderr = &s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting labreg serve: %v", err)
	}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-s.exited:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-s.exited
				t.Errorf("labreg serve did not stop within 20s of SIGINT")
			}
		}
		if t.Failed() {
			t.Logf("labreg serve stderr (tail):\n%s", tailBytes(s.stderr.String(), 6000))
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case line <- sc.Text():
			default:
			}
		}
	}()
	select {
	case l := <-line:
		m := serveLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("labreg serve printed %q, not where it listens", l)
		}
		s.Addr = m[1]
		if m := uiLine.FindStringSubmatch(l); m != nil {
			s.UIAddr = m[1]
		}
	case <-s.exited:
		t.Fatalf("labreg serve exited: %v\n%s", waitErr, s.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("labreg serve printed nothing in 30s\n%s", s.stderr.String())
	}
	WaitHTTP(t, "http://"+s.Addr+"/v2/", 10*time.Second)
	return s
}

// Pid is the server's process id (to read its /proc/PID/status).
func (s *ServeProcess) Pid() int { return s.cmd.Process.Pid }

// Signal sends sig to the server process.
func (s *ServeProcess) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to exit and returns its exit
// code; the test fails if it still runs.
func (s *ServeProcess) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("labreg serve still running after %s", timeout)
		return 0
	}
}

// Stderr is what the server has written to stderr so far.
func (s *ServeProcess) Stderr() string { return s.stderr.String() }

// tailBytes is the last n bytes of s, marked with "…" when cut.
func tailBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
