// Package units formats sizes for people, the one way labreg does it: the
// web UI, `labreg ls`, `labreg gc` and build progress all print sizes with
// HumanSize.
package units

import "fmt"

// HumanSize is n bytes in decimal (SI) units with one decimal, as docker
// prints image sizes ("2.1 MB", "512 B"): the sizes labreg shows are the
// sizes `docker images` and registries' UIs show for the same blobs, and a
// user compares them. Up to PB.
func HumanSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %cB", v, "kMGTP"[i])
}
