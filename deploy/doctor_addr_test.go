package deploy

import (
	"strings"
	"testing"
)

// TestSwarmAddrCheck: a swarm advertised on loopback fails once workers
// exist (a restarted worker dials 127.0.0.1:2377, itself), and only warns
// while the manager is alone.
func TestSwarmAddrCheck(t *testing.T) {
	tests := []struct {
		addr    string
		nodes   int
		ok      bool
		warning bool
	}{
		{"192.0.2.2", 4, true, false},
		{"127.0.0.1", 1, true, true},
		{"127.0.0.1", 4, false, false},
		{"::1", 2, false, false},
	}
	for _, tc := range tests {
		c := swarmAddrCheck(tc.addr, tc.nodes)
		if c.OK != tc.ok || (c.Fix != "") == c.OK {
			t.Errorf("%s with %d nodes: ok=%v fix=%q", tc.addr, tc.nodes, c.OK, c.Fix)
		}
		if got := strings.Contains(c.Detail, "will lose the swarm"); got != tc.warning {
			t.Errorf("%s with %d nodes: warning %v, want %v (%s)", tc.addr, tc.nodes, got, tc.warning, c.Detail)
		}
	}
}
