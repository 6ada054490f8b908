package executor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sandq/sandq/internal/runsc"
)

// oomKills reads how many processes the memory limit killed in a cgroup.
func oomKills(cgroupPath string) int {
	return cgroupCount(cgroupPath, "memory", "memory.oom_control", "memory.events", "oom_kill")
}

// pidsLimitHits reads how often a cgroup's pids limit refused a new task
// (the "max" count of pids.events, cgroup v1 or v2). A job that hits its
// tasks limit can take the sandbox down without any status; this tells it
// from a failure of the machinery.
func pidsLimitHits(cgroupPath string) int {
	return cgroupCount(cgroupPath, "pids", "pids.events", "pids.events", "max")
}

// cgroupCount reads the count named key from a cgroup's file: v1file in
// the controller's cgroup v1 hierarchy, or else v2file in the unified one.
// It is 0 when the file or the count is missing.
func cgroupCount(cgroupPath, controller, v1file, v2file, key string) int {
	v1, v2, err := runsc.CgroupRoots()
	if err != nil {
		return 0
	}
	var file string
	if root, ok := v1[controller]; ok {
		file = filepath.Join(root, cgroupPath, v1file)
	} else if v2 != "" {
		file = filepath.Join(v2, cgroupPath, v2file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
