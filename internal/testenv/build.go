package testenv

import (
	"fmt"
	"sync"
)

var (
	labregOnce sync.Once
	labregPath string
	labregErr  error
)

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return fmt.Sprintf("%v\n%s", e.err, e.out) }
