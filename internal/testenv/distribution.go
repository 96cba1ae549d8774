package testenv

import "testing"

// DistributionBinary returns the path of distribution's own registry
// binary (cmd/registry, at the version labreg embeds), the "before" of
// the benchmarks that compare labreg with it: $LABREG_DISTRIBUTION (set
// by .ci/run, which builds it in a tools module) or `registry` in PATH.
// Without it the caller skips loudly, or fails under LABREG_E2E=1.
func DistributionBinary(t testing.TB) string {
	t.Helper()
	return Binary(t, "LABREG_DISTRIBUTION", "registry", "distribution's registry binary",
		".ci/run builds it in a tools module: see build_distribution there")
}
