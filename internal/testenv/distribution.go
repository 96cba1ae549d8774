package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// DistributionBinary returns the path of distribution's own registry
// binary (cmd/registry, at the version labreg embeds), the "before" of
// the benchmarks that compare labreg with it: $LABREG_DISTRIBUTION (set
// by .ci/run, which builds it in a tools module) or `registry` in PATH.
// Without it the caller skips loudly, or fails under LABREG_E2E=1.
func DistributionBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("LABREG_DISTRIBUTION")
	if bin == "" {
		bin, _ = exec.LookPath("registry")
	}
	_, err := os.Stat(bin)
	Require(t, "distribution's registry binary", bin != "" && err == nil,
		"set LABREG_DISTRIBUTION or put distribution's `registry` in PATH (.ci/run builds it: see build_distribution there)")
	return bin
}
