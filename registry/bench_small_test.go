package registry

import "os"

// benchSmall is testenv.BenchSmall, which this package's own tests cannot
// import: LABREG_BENCH_SMALL=1 makes the benchmarks small, as `make test`
// runs each of them once so that a broken one fails the build.
func benchSmall() bool { return os.Getenv("LABREG_BENCH_SMALL") == "1" }

// benchSize is full, or small under LABREG_BENCH_SMALL=1.
func benchSize(full, small int64) int64 {
	if benchSmall() {
		return small
	}
	return full
}
