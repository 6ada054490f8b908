package executor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// runsc wait asks the sandbox how its application exited. It is not the
// sandbox's parent (runsc create forked it, and is gone), so when the
// application ends before runsc wait reaches the sandbox — a job that exits
// within tens of milliseconds of runsc start, on a loaded host — the
// sandbox has exited too and wait fails with "exit status is unavailable".
// The sandbox's own boot process logs the status just before it exits; with
// bootLogFlags on runsc create, that log is kept in the sandbox's scratch
// space, and bootExitStatus reads the status back from it. Sandboxes no
// longer run runsc wait at all (exitwatch.go reads the log as it is
// written); the bare runner and the fallback still do.

// A job that hits its tasks limit can take the sandbox down without any
// status (pidsLimitHits tells it from a failure of the machinery).

// bootLogFlags are global runsc flags for runsc create: the boot process
// (only it) writes its info-level log into dir.
func bootLogFlags(dir string) []string {
	return []string{"--debug-log=" + dir + string(filepath.Separator), "--debug-command=boot"}
}

// bootExitStatus is the application's exit status as the boot log in dir
// states it ("application exiting with exit status 3" or "... killed by
// signal 9"), in runsc wait's terms: the exit code, or 128+n for signal n
// (see exitStatusLine).
func bootExitStatus(dir string) (int, bool) {
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
			if n, ok := exitStatusLine(line); ok {
				status, found = n, true
			}
		}
		if found {
			return status, true
		}
	}
	return 0, false
}

// exitStatusLine parses a boot log line that states the application's exit
// status. Only a line whose message is that statement counts: the log also
// quotes the job's own arguments (its "EXEC:" line), which the job chooses.
func exitStatusLine(line string) (int, bool) {
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

// pidsLimitHits reads how often a cgroup's pids limit refused a new task
// (the "max" count of pids.events, cgroup v1 or v2).
func pidsLimitHits(cgroupPath string) int {
	v1, v2, err := cgroupRoots()
	if err != nil {
		return 0
	}
	var file string
	if p, ok := v1["pids"]; ok {
		file = filepath.Join(p, cgroupPath, "pids.events")
	} else if v2 != "" {
		file = filepath.Join(v2, cgroupPath, "pids.events")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "max "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
