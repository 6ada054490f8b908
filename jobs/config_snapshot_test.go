package jobs

import (
	"strings"
	"testing"
)

// A snapshot pool is bounded and needs snapshots.
func TestConfigValidateSnapshotPool(t *testing.T) {
	for _, c := range []struct {
		snapshots bool
		pool      int
		want      string
	}{
		{true, 0, ""},
		{true, 2, ""},
		{false, 0, ""},
		{false, 1, "a snapshot pool needs snapshots"},
		{true, -1, "snapshot pool -1: want 0 (off) to 64"},
		{true, 65, "snapshot pool 65: want 0 (off) to 64"},
	} {
		cfg := validConfig()
		cfg.Worker.Snapshots, cfg.Worker.SnapshotPool = c.snapshots, c.pool
		err := cfg.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("snapshots %v, pool %d: %v, want %q", c.snapshots, c.pool, err, c.want)
		}
	}
}
