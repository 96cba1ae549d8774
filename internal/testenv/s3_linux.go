package testenv

import "syscall"

// childOfTestBinary makes a helper process die with the test binary.
func childOfTestBinary() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
