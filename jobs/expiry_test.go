package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/storage"
)

// TestJobFilesLiveUnderTheStoragePrefix: the least-privilege policies grant
// objects under storage.ObjectPrefix only, so every job's files must be there.
func TestJobFilesLiveUnderTheStoragePrefix(t *testing.T) {
	for _, id := range []string{NewJobID(), "k-0123456789abcdef"} {
		if p := JobPrefix(id); !strings.HasPrefix(p, storage.ObjectPrefix) || len(p) <= len(storage.ObjectPrefix) {
			t.Errorf("JobPrefix(%q) = %q, not under %q", id, p, storage.ObjectPrefix)
		}
	}
}

func TestObjectExpiryDays(t *testing.T) {
	for _, c := range []struct {
		retention, links time.Duration
		want             int
	}{
		{0, 0, 8}, // defaults: 7 days of retention, plus a day
		{24 * time.Hour, time.Hour, 2},
		{25 * time.Hour, time.Hour, 3},
		{time.Hour, 7 * 24 * time.Hour, 8},
	} {
		cfg := Config{ResultRetention: c.retention, LinkExpiry: c.links}
		if got := cfg.ObjectExpiryDays(); got != c.want {
			t.Errorf("retention %s, links %s: %d days, want %d", c.retention, c.links, got, c.want)
		}
	}
}
