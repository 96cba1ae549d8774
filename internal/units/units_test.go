package units

import "testing"

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{999, "999 B"},
		{1000, "1.0 kB"},
		{1536, "1.5 kB"},
		{2_100_000, "2.1 MB"},
		{5 << 30, "5.4 GB"},
		{3_000_000_000_000_000, "3.0 PB"},
		{4_000_000_000_000_000_000, "4000.0 PB"},
	} {
		if got := HumanSize(tc.n); got != tc.want {
			t.Errorf("HumanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
