package executor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockDir takes an exclusive lock on dir/lock for the life of the process;
// the kernel drops it when the process dies, however it dies.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("worker lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("worker lock %s: %w", dir, err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// Sweep removes what workers that died on this host left behind: their
// containers, mounts, cgroups and scratch space. A worker directory whose
// lock can be taken belongs to a dead process; live workers' are skipped.
func (r *RunscRunner) Sweep(ctx context.Context) error {
	workers := filepath.Join(r.cfg.StateDir, "workers")
	ents, err := os.ReadDir(workers)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	var errs []error
	if r.net != nil {
		// Networks of dead workers anywhere on the host, whatever their
		// state directory.
		errs = append(errs, r.net.SweepDead())
	}
	for _, e := range ents {
		if !e.IsDir() || e.Name() == r.workerID {
			continue
		}
		dir := filepath.Join(workers, e.Name())
		lock, err := lockDir(dir)
		if err != nil {
			continue // alive
		}
		r.logger.Info("sweeping a dead worker's leftovers", "dead_worker", e.Name())
		if r.net != nil {
			// Its networks first: the lease files name its lock, which
			// goes with its directory.
			err = r.net.SweepWorker(e.Name())
		}
		if err == nil {
			err = cleanWorkerDir(ctx, r.runsc, dir, filepath.Join(r.cfg.CgroupParent, e.Name()))
		}
		lock.Close()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cleanWorkerDir deletes every container under dir's runsc root, unmounts
// everything mounted below dir, removes the cgroups and the directory.
func cleanWorkerDir(ctx context.Context, runsc, dir, cgroupDir string) error {
	var errs []error
	root := filepath.Join(dir, "runsc")
	ids, err := listContainers(ctx, runsc, root)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		out, err := exec.CommandContext(cctx, runsc, "--root="+root, "delete", "--force", id).CombinedOutput()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("delete container %s: %w: %s", id, err, strings.TrimSpace(string(out))))
		}
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range mounts {
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroups(cgroupDir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// listContainers lists the IDs of the containers under a runsc root.
func listContainers(ctx context.Context, runsc, root string) ([]string, error) {
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, runsc, "--root="+root, "list", "--format=json").Output()
	if err != nil {
		return nil, fmt.Errorf("runsc list %s: %w", root, err)
	}
	var list []struct {
		ID string `json:"id"`
	}
	if s := strings.TrimSpace(string(out)); s != "" && s != "null" {
		if err := json.Unmarshal(out, &list); err != nil {
			return nil, fmt.Errorf("runsc list: %q: %w", out, err)
		}
	}
	ids := make([]string, 0, len(list))
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	return ids, nil
}

func unmount(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}

type mountEntry struct {
	point   string
	fstype  string
	options string
}

func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+3 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1], options: fields[sep+3]})
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	all, err := readMountinfo()
	if err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	var out []string
	for _, m := range all {
		if strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// MountsUnder lists the mount points below dir (tests and checks).
func MountsUnder(dir string) ([]string, error) { return mountsUnder(dir) }

// cgroupRoots are the mount points of the cgroup hierarchies: each v1
// controller's and the unified v2 one.
func cgroupRoots() (v1 map[string]string, v2 string, err error) {
	all, err := readMountinfo()
	if err != nil {
		return nil, "", err
	}
	v1 = map[string]string{}
	for _, m := range all {
		switch m.fstype {
		case "cgroup2":
			if v2 == "" {
				v2 = m.point
			}
		case "cgroup":
			for _, opt := range strings.Split(m.options, ",") {
				switch opt {
				case "memory", "pids", "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc":
					v1[opt] = m.point
				}
				if strings.HasPrefix(opt, "name=") {
					v1[opt] = m.point
				}
			}
		}
	}
	return v1, v2, nil
}

// oomKills reads how many processes the memory limit killed in a cgroup.
func oomKills(cgroupPath string) int {
	v1, v2, err := cgroupRoots()
	if err != nil {
		return 0
	}
	var file string
	if mem, ok := v1["memory"]; ok {
		file = filepath.Join(mem, cgroupPath, "memory.oom_control")
	} else if v2 != "" {
		file = filepath.Join(v2, cgroupPath, "memory.events")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// removeCgroups removes the cgroup directory rel (and every cgroup below it)
// in each hierarchy. Only empty cgroups can be removed; a cgroup still
// holding a process is reported.
func removeCgroups(rel string) error {
	v1, v2, err := cgroupRoots()
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	roots := []string{}
	for _, p := range v1 {
		if !seen[p] {
			seen[p] = true
			roots = append(roots, p)
		}
	}
	if v2 != "" && !seen[v2] {
		roots = append(roots, v2)
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, rel)
		var dirs []string
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
