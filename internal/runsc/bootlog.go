package runsc

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// runsc wait asks the sandbox how its application exited. It is not the
// sandbox's parent (runsc create forked it, and is gone), so when the
// application ends before runsc wait reaches the sandbox — a job that exits
// within tens of milliseconds of runsc start, on a loaded host — the
// sandbox has exited too and wait fails with "exit status is unavailable".
// The sandbox's own boot process logs the status just before it exits; with
// BootLogFlags on runsc create, that log is kept in the sandbox's scratch
// space, and BootExitStatus reads the status back from it. Sandboxes no
// longer run runsc wait at all (the executor's exit watch reads the log as
// it is written, with ExitStatusLine); the bare runner and the fallback
// still do.

// BootLogFlags are global runsc flags for runsc create: the boot process
// (only it) writes its info-level log into dir.
func BootLogFlags(dir string) []string {
	return []string{"--debug-log=" + dir + string(filepath.Separator), "--debug-command=boot"}
}

// BootExitStatus is the application's exit status as the boot log in dir
// states it ("application exiting with exit status 3" or "... killed by
// signal 9"), in runsc wait's terms: the exit code, or 128+n for signal n
// (see ExitStatusLine).
func BootExitStatus(dir string) (int, bool) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.boot.txt"))
	for _, p := range logs {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 4<<20))
		f.Close()
		status, found := 0, false
		for _, line := range strings.Split(string(b), "\n") {
			if n, ok := ExitStatusLine(line); ok {
				status, found = n, true
			}
		}
		if found {
			return status, true
		}
	}
	return 0, false
}

// ExitStatusLine parses a boot log line that states the application's exit
// status. Only a line whose message is that statement counts: the log also
// quotes the job's own arguments (its "EXEC:" line), which the job chooses.
func ExitStatusLine(line string) (int, bool) {
	const marker = "application exiting with "
	// glog: "I1126 01:15:51.429743       1 boot.go:779] message"
	head, msg, ok := strings.Cut(line, "] ")
	if !ok || !strings.HasPrefix(msg, marker) || strings.Contains(head, "\"") {
		return 0, false
	}
	var n int
	rest := msg[len(marker):]
	if _, err := fmt.Sscanf(rest, "exit status %d", &n); err == nil && n >= 0 && n < 256 {
		return n, true
	}
	if _, err := fmt.Sscanf(rest, "killed by signal %d", &n); err == nil && n > 0 && n < 65 {
		return 128 + n, true
	}
	return 0, false
}
