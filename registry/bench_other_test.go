//go:build !linux

package registry

import (
	"errors"
	"syscall"
	"time"
)

var errNoCongestion = errors.New("choosing a TCP congestion control is Linux-only here")

func setCongestion(syscall.RawConn, string) error { return errNoCongestion }

func congestionAvailable(string) error { return errNoCongestion }

func systemCongestion() string { return "" }

// cpuTime is the CPU time this process has used: unknown here (0).
func cpuTime() time.Duration { return 0 }
