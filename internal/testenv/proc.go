package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// ProcWritten is the number of bytes process pid has written so far:
// wchar of /proc/PID/io, which counts write(2), sendfile(2) and the like
// on sockets, pipes and files alike. For a server that only reads its
// storage, it is what it sent to clients plus what it logged.
func ProcWritten(t testing.TB, pid int) int64 {
	t.Helper()
	return procField(t, fmt.Sprintf("/proc/%d/io", pid), "wchar:", 1)
}

// ResetPeakRSS makes process pid's peak resident set size (VmHWM) its
// current one (writes 5 to /proc/PID/clear_refs), so that PeakRSS then
// measures from now.
func ResetPeakRSS(t testing.TB, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS of process %d: %v", pid, err)
	}
}

// PeakRSS is process pid's peak resident set size in bytes (VmHWM of
// /proc/PID/status) since it started or since ResetPeakRSS.
func PeakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	return procField(t, fmt.Sprintf("/proc/%d/status", pid), "VmHWM:", 1024)
}

// procField reads the number after name in file, times unit.
func procField(t testing.TB, file, name string, unit int64) int64 {
	t.Helper()
	_, err := os.Stat("/proc/self/io")
	Require(t, "/proc/PID/io (Linux)", err == nil, fmt.Sprint(err))
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == name {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: %s %q: %v", file, name, f[1], err)
			}
			return n * unit
		}
	}
	t.Fatalf("%s has no %s", file, name)
	return 0
}

// startChild starts cmd as a helper process that dies with the test
// binary, and returns a channel closed once it has exited (cmd.Wait
// returned; cmd.ProcessState says how). The parent-death signal fires
// when the thread that started the child ends, so it is started from a
// thread kept for the life of the child.
func startChild(cmd *exec.Cmd) (exited <-chan struct{}, err error) {
	cmd.SysProcAttr = childOfTestBinary()
	started, done := make(chan error, 1), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
