package multihost

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/internal/runsc"
)

// cgroupParent is the cgroup the hosts' workers put their sandboxes under
// (the worker's default).
const cgroupParent = executor.DefaultCgroupParent

// Container is one runsc container of a host, as `runsc list` shows it.
type Container struct {
	// Host is the host's name; Root the container's runsc root.
	Host, Root string
	ID, Status string
	Bundle     string
	Created    time.Time
}

// Env is the value of the variable name in the container's environment
// (read from its bundle), "" if unset or gone.
func (c Container) Env(name string) string {
	b, err := os.ReadFile(filepath.Join(c.Bundle, "config.json"))
	if err != nil {
		return ""
	}
	var spec struct {
		Process struct {
			Env []string `json:"env"`
		} `json:"process"`
	}
	if json.Unmarshal(b, &spec) != nil {
		return ""
	}
	for _, kv := range spec.Process.Env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// Containers lists the runsc containers under every worker's runsc root
// on the host. On a running host runsc runs inside it (its PIDs are the
// host's); on a host that is down, the state files are listed from
// outside: a container there is a leftover whatever its status.
func (h *Host) Containers(ctx context.Context) ([]Container, error) {
	var out []Container
	for _, id := range h.WorkerIDs() {
		root := filepath.Join(h.StateDir, "workers", id, "runsc")
		if _, err := os.Stat(root); err != nil {
			continue
		}
		var b []byte
		var err error
		if h.InitPid() != 0 {
			b, err = h.Exec(ctx, "runsc", "--root="+root, "list")
		} else {
			b, err = exec.CommandContext(ctx, "runsc", "--root="+root, "list").Output()
		}
		if err != nil {
			if _, serr := os.Stat(root); errors.Is(serr, os.ErrNotExist) {
				continue // removed meanwhile
			}
			return nil, fmt.Errorf("runsc list %s: %w", root, err)
		}
		list, err := ParseRunscList(string(b))
		if err != nil {
			return nil, err
		}
		for _, c := range list {
			c.Host, c.Root = h.Name, root
			out = append(out, c)
		}
	}
	return out, nil
}

// ParseRunscList reads the text `runsc list` prints (only it has creation
// times): ID PID STATUS BUNDLE CREATED OWNER. Host and Root are left
// unset.
func ParseRunscList(out string) ([]Container, error) {
	var list []Container
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		c := Container{ID: f[0], Status: f[2], Bundle: f[3]}
		var err error
		if c.Created, err = time.Parse(time.RFC3339Nano, f[4]); err != nil {
			return nil, fmt.Errorf("runsc list: %q: %w", line, err)
		}
		list = append(list, c)
	}
	return list, nil
}

// Leftovers is what sandboxes (and, on a host that is down, workers) left
// on a host: what the fault suite checks.
type Leftovers struct {
	Containers, Mounts, SandboxDirs, WorkerDirs []string
	Netns, Leases, Veths, Rules, Cgroups        []string
}

// Count is the number of leftovers.
func (l Leftovers) Count() int {
	return len(l.Containers) + len(l.Mounts) + len(l.SandboxDirs) + len(l.WorkerDirs) +
		len(l.Netns) + len(l.Leases) + len(l.Veths) + len(l.Rules) + len(l.Cgroups)
}

func (l Leftovers) String() string {
	return fmt.Sprintf("containers %d, mounts %d, sandbox dirs %d, worker dirs %d, netns %d, leases %d, veths %d, nft rules %d, cgroups %d",
		len(l.Containers), len(l.Mounts), len(l.SandboxDirs), len(l.WorkerDirs), len(l.Netns), len(l.Leases), len(l.Veths), len(l.Rules), len(l.Cgroups))
}

// Leftovers lists what the host holds of sandboxes now: containers,
// mounts (of the host's mount namespace), scratch directories, the
// sandboxes' network namespaces, lease files, job interfaces and firewall
// rules (of the host's network namespace), and sandbox cgroups. On a
// host that is down the workers' own directories and cgroups count too
// (what a reboot leaves: /run and the mounts went with the host).
func (h *Host) Leftovers(ctx context.Context) (Leftovers, error) {
	var l Leftovers
	var errs []error
	cs, err := h.Containers(ctx)
	errs = append(errs, err)
	for _, c := range cs {
		l.Containers = append(l.Containers, c.ID+" ("+c.Status+")")
	}
	l.SandboxDirs, _ = filepath.Glob(filepath.Join(h.StateDir, "workers", "*", "sandboxes", "*"))
	alive := h.InitPid() != 0
	if alive {
		l.Mounts, err = h.mounts()
		errs = append(errs, err)
		l.Netns, err = h.ls(ctx, "/run/netns")
		errs = append(errs, err)
		leases, err := h.ls(ctx, "/run/sandq/net")
		errs = append(errs, err)
		for _, f := range leases {
			if strings.HasSuffix(f, ".lease") {
				l.Leases = append(l.Leases, f)
			}
		}
	} else {
		l.WorkerDirs = h.WorkerIDs()
	}
	l.Veths, err = h.jobLinks(ctx)
	errs = append(errs, err)
	l.Rules, err = h.jobRules()
	errs = append(errs, err)
	for _, id := range h.WorkerIDs() {
		pattern := filepath.Join(cgroupParent, id, "*")
		if !alive {
			pattern = filepath.Join(cgroupParent, id)
		}
		l.Cgroups = append(l.Cgroups, cgroupsMatching(pattern)...)
	}
	return l, errors.Join(errs...)
}

// mounts are the mount points under the state directory of the host's
// mount namespace that belong to sandboxes (the workers' own runsc roots
// are not counted).
func (h *Host) mounts() ([]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", h.InitPid()))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := fields[4]
		if strings.HasPrefix(mp, h.StateDir+"/") && strings.Contains(mp, "/sandboxes/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// ls lists a directory of the host's mount namespace; a missing one is
// empty.
func (h *Host) ls(ctx context.Context, dir string) ([]string, error) {
	out, err := h.Exec(ctx, "sh", "-c", "test -d "+dir+" || exit 0; ls -A "+dir)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// jobLinks are the job interfaces (jobnet.IfPrefix) in the host's network
// namespace.
func (h *Host) jobLinks(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "-n", h.netns, "-o", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip -n %s link: %w", h.netns, err)
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, jobnet.IfPrefix) {
			links = append(links, name)
		}
	}
	return links, nil
}

// jobRules are the rules of jobs (their user data "sandq:<worker>:...",
// not the base rules) in table inet sandq of the host's network namespace.
func (h *Host) jobRules() ([]string, error) {
	f, err := os.Open("/run/netns/" + h.netns)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return nil, err
	}
	rules, err := RulesTagged(c, func(tag string) bool {
		return strings.HasPrefix(tag, "sandq:") && !strings.HasPrefix(tag, "sandq:base")
	})
	if err != nil {
		return nil, fmt.Errorf("nft rules of %s: %w", h.Name, err)
	}
	return rules, nil
}

// RulesTagged lists the user data (sandq's tags) of the rules of table
// inet sandq, through c, that keep accepts.
func RulesTagged(c *nftables.Conn, keep func(tag string) bool) ([]string, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != "sandq" {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			if tag := string(r.UserData); keep(tag) {
				out = append(out, tag)
			}
		}
	}
	return out, nil
}

// cgroupsMatching are the cgroup directories, in any hierarchy, that
// match pattern (relative to each hierarchy's root).
func cgroupsMatching(pattern string) []string {
	v1, v2, err := runsc.CgroupRoots()
	if err != nil {
		return nil
	}
	roots := map[string]bool{}
	for _, r := range v1 {
		roots[r] = true
	}
	if v2 != "" {
		roots[v2] = true
	}
	var out []string
	for r := range roots {
		m, _ := filepath.Glob(filepath.Join(r, pattern))
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				out = append(out, d)
			}
		}
	}
	return out
}
