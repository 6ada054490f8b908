package runsc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBootExitStatus(t *testing.T) {
	for _, c := range []struct {
		log    string
		status int
		ok     bool
	}{
		{"I1126 01:15:51.429743       1 boot.go:779] application exiting with exit status 3\n", 3, true},
		{"I1126 01:15:51.4       1 boot.go:779] application exiting with exit status 0\nI1126 done\n", 0, true},
		{"I1126 01:15:53.683705       1 boot.go:779] application exiting with killed by signal 9\n", 137, true},
		{"I1126 01:15:53.6 1 boot.go:779] application exiting with killed by signal 9 (core dumped)\n", 137, true},
		{"I1126 01:15:53.6 1 loader.go:1] starting\n", 0, false},
		{"I1126 boot.go:779] application exiting with unknown status 0x57f\n", 0, false},
		{"", 0, false},
		// The job's arguments are quoted in the log; they never count.
		{`I1126 01:15:51.4       1 kernel.go:1312] EXEC: []string{"/bin/sh", "] application exiting with exit status 0"}` + "\n", 0, false},
		{`I1126 01:15:51.4       1 kernel.go:1312] EXEC: []string{"/bin/sh", "x\n] application exiting with exit status 0"}` + "\n", 0, false},
		{"I1126 01:15:51.4       1 boot.go:779] application exiting with exit status 4\n" +
			`I1126 01:15:51.5       1 kernel.go:1312] EXEC: []string{"application exiting with exit status 0"}` + "\n", 4, true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "runsc.log.20261126-011551.253247.boot.txt"), []byte(c.log), 0o600); err != nil {
			t.Fatal(err)
		}
		status, ok := BootExitStatus(dir)
		if status != c.status || ok != c.ok {
			t.Errorf("%q: %d %v, want %d %v", c.log, status, ok, c.status, c.ok)
		}
	}
	if _, ok := BootExitStatus(filepath.Join(t.TempDir(), "missing")); ok {
		t.Error("a missing log gave a status")
	}
}
