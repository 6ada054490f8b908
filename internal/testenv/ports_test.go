package testenv

import "testing"

// FreePort never hands one test process the same port twice: the kernel
// picks from its ephemeral range at random and may give a freed port
// again, so 500 picks would very likely repeat one otherwise.
func TestFreePortHandsOutEachPortOnce(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
