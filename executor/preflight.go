package executor

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/runsc"
)

// MinRunscDate is the oldest runsc a worker runs with, as the date of the
// gVisor commit it was built from (the pseudo-version's timestamp for a
// build from the Go module, the date in the name of a release-YYYYMMDD.N).
// sandq gives every sandbox --overlay2=root:dir=...,size=N, and the size
// option of --overlay2 was proposed in May 2025; older runsc refuse the flag
// or ignore the disk limit. scripts/install-deps.sh pins a newer one, and
// CheckRunsc also tries the flags themselves, so a build that is new enough
// by date but lacks them is refused too.
const MinRunscDate = "2025-06-01"

// RunscVersion is what CheckRunsc found out about a runsc binary.
type RunscVersion struct {
	// Path is the binary.
	Path string
	// Version is as the binary reports it: a Go module pseudo-version
	// (v0.0.0-20260905035102-160fafc42237) or a release name
	// (release-20260901.0).
	Version string
	// Date is the date of the gVisor commit it was built from.
	Date time.Time
}

// ErrRunsc marks a runsc that a worker refuses to use: missing, broken, too
// old or of unknown age.
var ErrRunsc = errors.New("unusable runsc")

var (
	// A pseudo-version ends in -yyyymmddhhmmss-<12 hex>, after a '-' or a '.'.
	pseudoVersionRE = regexp.MustCompile(`[-.]([0-9]{14})-[0-9a-f]{12}(\+incompatible)?$`)
	// runsc --version prints "runsc version release-20240513.0" for releases.
	releaseRE = regexp.MustCompile(`release-([0-9]{8})(\.[0-9]+)?`)
)

// parseRunscVersion reads the commit date out of a version string: a Go
// module pseudo-version or a release name. ok is false when it has none
// (e.g. "VERSION_MISSING", "(devel)").
func parseRunscVersion(v string) (time.Time, bool) {
	if m := pseudoVersionRE.FindStringSubmatch(v); m != nil {
		t, err := time.Parse("20060102150405", m[1])
		return t, err == nil
	}
	if m := releaseRE.FindStringSubmatch(v); m != nil {
		t, err := time.Parse("20060102", m[1])
		return t, err == nil
	}
	return time.Time{}, false
}

// CheckRunsc refuses a runsc that is missing, does not run, is older than
// MinRunscDate or whose age cannot be told, or that does not accept the
// global flags sandq gives every sandbox (with platform as --platform). The
// version comes from the module information Go writes into the binary (set
// when it is built with `go install gvisor.dev/gvisor/runsc@VERSION`, as
// scripts/install-deps.sh does) or else from `runsc --version` (release
// builds).
func CheckRunsc(ctx context.Context, runsc, platform string) (RunscVersion, error) {
	oldest, _ := time.Parse(time.DateOnly, MinRunscDate)
	const fix = "install the pinned version with scripts/install-deps.sh, or point --runsc at a newer one"
	bin, err := exec.LookPath(runsc)
	if err != nil {
		return RunscVersion{}, fmt.Errorf("%w: runsc not found (%s): %w; install it with scripts/install-deps.sh", ErrRunsc, runsc, err)
	}
	v := RunscVersion{Path: bin}
	// runsc --version must work whatever else is known: it proves the binary
	// runs on this host.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return v, fmt.Errorf("%w: %s --version: %w: %s; %s", ErrRunsc, bin, err, firstLine(out), fix)
	}
	reported := strings.TrimSpace(strings.TrimPrefix(firstLine(out), "runsc version"))
	if bi, err := buildinfo.ReadFile(bin); err == nil && bi.Main.Path == "gvisor.dev/gvisor" {
		if d, ok := parseRunscVersion(bi.Main.Version); ok {
			v.Version, v.Date = bi.Main.Version, d
		}
	}
	if v.Date.IsZero() {
		d, ok := parseRunscVersion(reported)
		if !ok {
			return v, fmt.Errorf("%w: cannot tell the age of %s: it reports version %q and carries no gVisor module version; sandq needs a runsc built from gVisor of %s or later: %s",
				ErrRunsc, bin, reported, MinRunscDate, fix)
		}
		v.Version, v.Date = reported, d
	}
	if v.Date.Before(oldest) {
		return v, fmt.Errorf("%w: %s is too old: version %s is from %s, sandq needs gVisor of %s or later: %s",
			ErrRunsc, bin, v.Version, v.Date.Format(time.DateOnly), MinRunscDate, fix)
	}
	// The flags every sandbox gets, on a command that starts nothing.
	dir, err := os.MkdirTemp("", "sandq-runsc-check-")
	if err != nil {
		return v, err
	}
	defer os.RemoveAll(dir)
	probe := exec.CommandContext(ctx, bin, "--root="+dir, "--platform="+platform, "--network=none",
		fmt.Sprintf("--overlay2=root:dir=%s,size=%d", dir, 1<<20), "list")
	if out, err := probe.CombinedOutput(); err != nil {
		return v, fmt.Errorf("%w: %s (version %s) refuses the flags sandq runs it with: %w: %s; %s", ErrRunsc, bin, v.Version, err, firstLine(out), fix)
	}
	return v, nil
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	return string(line)
}

// Capabilities a worker needs besides being root: CAP_SYS_ADMIN for mounts,
// namespaces and cgroups, CAP_NET_ADMIN for sandbox networks and firewall
// rules.
var neededCaps = []struct {
	bit  uint
	name string
}{{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}}

// privileges are the facts CheckPrivileges judges.
type privileges struct {
	euid int
	// capEff is the effective capability set.
	capEff uint64
	// memCgroup is the mount point of the memory cgroup controller ("" when
	// none is mounted); cgroupParent the cgroup sandboxes are made under.
	memCgroup, cgroupParent string
}

// CheckPrivileges refuses to go on without what sandboxes need: root,
// CAP_SYS_ADMIN and CAP_NET_ADMIN, and a memory cgroup controller in which
// the worker can make cgroups under cgroupParent (without one, memory
// limits could not be enforced).
func CheckPrivileges(cgroupParent string) error {
	p, err := readPrivileges(cgroupParent)
	if err != nil {
		return err
	}
	return checkPrivileges(p)
}

func readPrivileges(cgroupParent string) (privileges, error) {
	p := privileges{euid: os.Geteuid(), cgroupParent: cgroupParent}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return p, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			if p.capEff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				return p, fmt.Errorf("read capabilities: CapEff %q: %w", v, err)
			}
			found = true
		}
	}
	if err := sc.Err(); err != nil {
		return p, fmt.Errorf("read capabilities: %w", err)
	}
	if !found {
		return p, errors.New("read capabilities: no CapEff in /proc/self/status")
	}
	v1, v2, err := runsc.CgroupRoots()
	if err != nil {
		return p, fmt.Errorf("find cgroup mounts: %w", err)
	}
	if mem, ok := v1["memory"]; ok {
		p.memCgroup = mem
	} else if v2 != "" {
		if b, err := os.ReadFile(filepath.Join(v2, "cgroup.controllers")); err == nil && strings.Contains(" "+strings.TrimSpace(string(b))+" ", " memory ") {
			p.memCgroup = v2
		}
	}
	return p, nil
}

func checkPrivileges(p privileges) error {
	const privileged = "run the worker as root with full capabilities (in a container: privileged, e.g. docker run --privileged)"
	if p.euid != 0 {
		return fmt.Errorf("the worker runs as uid %d but must run as root: runsc needs it to create sandboxes, mounts and cgroups; %s", p.euid, privileged)
	}
	var missing []string
	for _, c := range neededCaps {
		if p.capEff&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the worker lacks %s (effective capabilities %#x): sandboxes need them for mounts, namespaces, cgroups and networks; %s",
			strings.Join(missing, " and "), p.capEff, privileged)
	}
	if p.memCgroup == "" {
		return errors.New("no memory cgroup controller is mounted (neither a cgroup v1 memory hierarchy nor memory in cgroup v2's cgroup.controllers): sandbox memory limits could not be enforced; enable the memory controller (kernel cgroup_enable=memory) and mount it")
	}
	parent := filepath.Join(p.memCgroup, p.cgroupParent)
	probe := filepath.Join(parent, ".sandq-check-"+randomHex(4))
	err := os.MkdirAll(parent, 0o755)
	if err == nil {
		err = os.Mkdir(probe, 0o755)
	}
	if err != nil {
		return fmt.Errorf("the memory cgroup at %s is not writable (%w): sandbox memory limits could not be enforced; %s, with /sys/fs/cgroup mounted read-write", parent, err, privileged)
	}
	if err := unix.Rmdir(probe); err != nil {
		return fmt.Errorf("remove the probe cgroup %s: %w", probe, err)
	}
	return nil
}
