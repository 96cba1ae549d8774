//go:build !linux

package registry

import (
	"errors"
	"syscall"
)

var errNoCongestion = errors.New("choosing a TCP congestion control is Linux-only here")

func setCongestion(syscall.RawConn, string) error { return errNoCongestion }

func congestionAvailable(string) error { return errNoCongestion }

func systemCongestion() string { return "" }
