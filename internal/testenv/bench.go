package testenv

import "os"

// BenchSmall reports whether LABREG_BENCH_SMALL=1: benchmarks run at a
// small size (a few MiB where they move hundreds, a few dozen nodes where
// a thousand, a few hundred repositories where ten thousand), as `make
// test` runs each of them once, so that a broken benchmark fails the
// build; `make bench` runs them at full size.
func BenchSmall() bool { return os.Getenv("LABREG_BENCH_SMALL") == "1" }

// BenchSize is full, or small under LABREG_BENCH_SMALL=1.
func BenchSize[T ~int | ~int64](full, small T) T {
	if BenchSmall() {
		return small
	}
	return full
}
