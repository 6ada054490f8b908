package runsc

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func Unmount(path string) error {
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

// MountsUnder lists the mount points below dir, deepest first.
func MountsUnder(dir string) ([]string, error) {
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

// CgroupRoots are the mount points of the cgroup hierarchies: each v1
// controller's and the unified v2 one.
func CgroupRoots() (v1 map[string]string, v2 string, err error) {
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

// RemoveCgroups removes the cgroup directory rel (and every cgroup below it)
// in each hierarchy. Only empty cgroups can be removed; a cgroup still
// holding a process is reported.
func RemoveCgroups(rel string) error {
	v1, v2, err := CgroupRoots()
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
