//go:build !linux

package testenv

import "syscall"

// childOfTestBinary: only Linux kills a child with its parent; elsewhere
// the store outlives the test binary until its next run sweeps its data.
func childOfTestBinary() *syscall.SysProcAttr { return nil }
