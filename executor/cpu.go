package executor

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CPUPeriodMicros is the period of a sandbox's CPU limit: in each period of
// 100ms its cgroup may run CPUs × 100ms of CPU time, then waits for the
// next (the kernel's CFS bandwidth control, cgroup v1 cpu.cfs_quota_us or
// v2 cpu.max).
const CPUPeriodMicros = 100_000

// MinCPUs is the smallest CPU limit: the kernel refuses a quota under 1ms
// per period.
const MinCPUs = 0.01

// cpuQuotaMicros is the quota per CPUPeriodMicros of a limit of cpus.
func cpuQuotaMicros(cpus float64) int64 {
	return int64(math.Round(cpus * CPUPeriodMicros))
}

// setCPULimit sets a cgroup's CPU bandwidth to cpus CPUs (quota cpus ×
// CPUPeriodMicros per CPUPeriodMicros), or lifts it for 0. It is written
// into the sandbox's cgroup when its job starts rather than left to runsc,
// so that a sandbox created or restored before its job was known runs
// under the job's own limit.
func setCPULimit(cgroupPath string, cpus float64) error {
	file, v2, err := cgroupFile(cgroupPath, "cpu", "cpu.cfs_quota_us", "cpu.max")
	if err != nil {
		return err
	}
	quota := "-1"
	if cpus > 0 {
		quota = strconv.FormatInt(cpuQuotaMicros(cpus), 10)
	}
	period := strconv.Itoa(CPUPeriodMicros)
	if v2 {
		if cpus <= 0 {
			quota = "max"
		}
		return os.WriteFile(file, []byte(quota+" "+period), 0)
	}
	// v1: the period first, so that the quota is checked against it.
	if err := os.WriteFile(filepath.Join(filepath.Dir(file), "cpu.cfs_period_us"), []byte(period), 0); err != nil {
		return err
	}
	return os.WriteFile(file, []byte(quota), 0)
}

// cpuLimit reads a cgroup's CPU bandwidth back, in CPUs; 0 when unlimited.
func cpuLimit(cgroupPath string) (float64, error) {
	file, v2, err := cgroupFile(cgroupPath, "cpu", "cpu.cfs_quota_us", "cpu.max")
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	var quota, period string
	switch {
	case v2 && len(fields) == 2:
		quota, period = fields[0], fields[1]
	case !v2 && len(fields) == 1:
		p, err := os.ReadFile(filepath.Join(filepath.Dir(file), "cpu.cfs_period_us"))
		if err != nil {
			return 0, err
		}
		quota, period = fields[0], strings.TrimSpace(string(p))
	default:
		return 0, fmt.Errorf("%s: unexpected %q", file, b)
	}
	if quota == "max" || quota == "-1" {
		return 0, nil
	}
	q, err1 := strconv.ParseInt(quota, 10, 64)
	p, err2 := strconv.ParseInt(period, 10, 64)
	if err := errors.Join(err1, err2); err != nil || p <= 0 {
		return 0, fmt.Errorf("%s: unexpected quota %q period %q", file, quota, period)
	}
	return float64(q) / float64(p), nil
}

// cpuUsage is the CPU time a cgroup's tasks have used since it was made,
// in seconds: cgroup v1 cpuacct.usage (nanoseconds) or v2 cpu.stat
// usage_usec.
func cpuUsage(cgroupPath string) (float64, error) {
	file, v2, err := cgroupFile(cgroupPath, "cpuacct", "cpuacct.usage", "cpu.stat")
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	if !v2 {
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", file, err)
		}
		return float64(ns) / 1e9, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", file, err)
			}
			return float64(us) / 1e6, nil
		}
	}
	return 0, fmt.Errorf("%s: no usage_usec", file)
}

// applyCPULimit sets the sandbox's cgroup to the job's CPU limit and
// checks it reads back so: a job is not run under another limit than its
// own. Without a limit, a host without the CPU controller is not an error.
func (s *runscSandbox) applyCPULimit(cpus float64) error {
	if was, err := cpuLimit(s.cgroupPath()); err == nil {
		s.logger.Debug("CPU limit", "created_with", was, "job", cpus)
	}
	if err := setCPULimit(s.cgroupPath(), cpus); err != nil {
		if cpus == 0 {
			s.logger.Debug("no CPU limit to lift", "err", err)
			return nil
		}
		return fmt.Errorf("setting the sandbox's CPU limit: %w", err)
	}
	got, err := cpuLimit(s.cgroupPath())
	if err != nil {
		return fmt.Errorf("reading the sandbox's CPU limit back: %w", err)
	}
	if math.Abs(got-cpus) > 1.0/CPUPeriodMicros {
		return fmt.Errorf("the sandbox's CPU limit reads %v CPUs after setting %v", got, cpus)
	}
	return nil
}
