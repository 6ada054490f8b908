package executor

import (
	"fmt"
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
	file, _, err := cgroupFile(cgroupPath, controller, v1file, v2file)
	if err != nil {
		return 0
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

// cgroupFile is the path of a cgroup's file: v1file in the controller's
// cgroup v1 hierarchy when the host mounts one, else v2file in the unified
// hierarchy. It fails when neither is there (the controller is not enabled
// for the cgroup).
func cgroupFile(cgroupPath, controller, v1file, v2file string) (file string, v2 bool, err error) {
	v1roots, v2root, err := runsc.CgroupRoots()
	if err != nil {
		return "", false, err
	}
	if root, ok := v1roots[controller]; ok {
		file = filepath.Join(root, cgroupPath, v1file)
	} else if v2root != "" {
		file, v2 = filepath.Join(v2root, cgroupPath, v2file), true
	} else {
		return "", false, fmt.Errorf("no %s cgroup controller on this host", controller)
	}
	if _, err := os.Stat(file); err != nil {
		return "", false, fmt.Errorf("cgroup %s: %w", controller, err)
	}
	return file, v2, nil
}
