package multihost

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
)

// Config describes a simulated host's worker.
type Config struct {
	// Name is the host's hostname; it names its namespace too. Default
	// hN, N its number on the bridge.
	Name string
	// Dir holds the host's state directory (Dir/state) and worker logs.
	Dir string
	// Bin is the sandq binary.
	Bin string
	// Env is the worker's SANDQ_* environment (Redis, S3, log level):
	// the test's own SANDQ_* variables are not passed on.
	Env []string
	// Args are the worker's flags besides --state-dir, which is the
	// host's own.
	Args []string
}

// Hosts on a bridge: host N has the bridge's address hostAddrBase+N.
const (
	maxHosts     = 200
	hostAddrBase = 10
)

// startTimeout is how long Start waits for the worker to say it started.
const startTimeout = 3 * time.Minute

// initScript is the host's init (PID 1 of its PID namespace): it gives
// the host a fresh /run, a /sys of its network namespace (with the
// machine's cgroup hierarchies kept below it) and its hostname, runs the worker, passes SIGTERM
// on to it and reaps orphans (bash reaps every child), and exits with the
// worker's status. Its arguments: the hostname, then the worker's command.
const initScript = `set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/mh-cgroup
mount --rbind /sys/fs/cgroup /run/mh-cgroup
mount -t sysfs sysfs /sys
mount --move /run/mh-cgroup /sys/fs/cgroup
rmdir /run/mh-cgroup
hostname "$1"
shift
set +e
"$@" &
w=$!
trap 'kill -TERM "$w" 2>/dev/null' TERM INT
while :; do wait "$w"; st=$?; kill -0 "$w" 2>/dev/null || exit "$st"; done`

// Host is one simulated worker host on a Bridge.
type Host struct {
	Config
	// Index numbers the host on its bridge, from 1; Addr is its address.
	Index int
	Addr  netip.Addr
	// StateDir is the worker's --state-dir.
	StateDir string

	bridge *Bridge
	netns  string // network namespace, by its name under /run/netns
	veth   string // root side of the host's link, the bridge port

	mu      sync.Mutex
	proc    *testenv.Process
	initPid int // the host's PID 1, as the root namespace sees it
	starts  int
	closed  bool
}

// NewHost makes a host on the bridge: its network namespace, linked to
// the bridge, with an address on the bridge's subnet (and no route beyond
// it: nothing a host runs may leave the machine). Start runs its worker;
// the bridge's Close closes it if Close was not called.
func (b *Bridge) NewHost(ctx context.Context, cfg Config) (_ *Host, err error) {
	if cfg.Dir == "" || cfg.Bin == "" {
		return nil, errors.New("multihost: a host needs Dir and Bin")
	}
	h := &Host{Config: cfg, bridge: b, StateDir: filepath.Join(cfg.Dir, "state")}
	// The host's number is taken and the host listed at once, so that
	// hosts made concurrently get distinct numbers and addresses.
	b.mu.Lock()
	h.Index = len(b.hosts) + 1
	if h.Index > maxHosts {
		b.mu.Unlock()
		return nil, fmt.Errorf("multihost: at most %d hosts on a bridge", maxHosts)
	}
	b.hosts = append(b.hosts, h)
	b.mu.Unlock()
	if h.Name == "" {
		h.Name = "h" + strconv.Itoa(h.Index)
	}
	a := b.Prefix.Addr().As4()
	a[3] = byte(hostAddrBase + h.Index)
	h.Addr = netip.AddrFrom4(a)
	// Names in the root namespace go by the host's number: names may
	// repeat (each scenario's h1).
	h.netns = fmt.Sprintf("%s%s-%d-%s", namePrefix, b.tag, h.Index, h.Name)
	h.veth = fmt.Sprintf("%s%sv%d", namePrefix, b.tag, h.Index)
	defer func() {
		if err != nil {
			err = errors.Join(err, h.Close())
		}
	}()
	if err := os.MkdirAll(h.StateDir, 0o700); err != nil {
		return nil, err
	}
	if err := ipRun(ctx, "netns", "add", h.netns); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, "",
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", h.veth, h.netns),
		fmt.Sprintf("link set %s master %s", h.veth, b.Name),
		fmt.Sprintf("link set %s up", h.veth),
	); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, h.netns,
		"link set lo up",
		fmt.Sprintf("addr add %s/%d dev eth0", h.Addr, b.Prefix.Bits()),
		"link set eth0 up",
	); err != nil {
		return nil, err
	}
	return h, nil
}

// Start boots the host: its init, in new mount, PID and UTS namespaces
// inside its network namespace, runs the worker. It returns once the
// worker says it started. A host may be started again after Stop or Kill,
// as a host reboots: /run is fresh, the state directory stays.
func (h *Host) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("host %s is closed", h.Name)
	}
	if h.proc != nil && h.proc.Alive() {
		return fmt.Errorf("host %s is running", h.Name)
	}
	h.starts++
	args := append([]string{"--net=/run/netns/" + h.netns, "--",
		"unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--",
		"bash", "-c", initScript, "mh-init", h.Name, h.Bin, "worker", "--state-dir", h.StateDir}, h.Args...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = workerEnv(h.Env)
	// unshare --fork blocks SIGTERM while it waits for its child: if the
	// test process dies, SIGKILL it, and --kill-child takes the host's
	// init, and with it every process of the host, along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p, err := testenv.StartProcess(cmd, filepath.Join(h.Dir, fmt.Sprintf("worker-%d.log", h.starts)))
	if err != nil {
		return err
	}
	h.proc = p
	if _, err := p.WaitOutput("worker started", startTimeout); err != nil {
		h.killLocked()
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	if h.initPid, err = childOf(p.Pid()); err != nil {
		h.killLocked()
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	return nil
}

// workerEnv is this process's environment without SANDQ_* variables, and
// env.
func workerEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SANDQ_") {
			out = append(out, kv)
		}
	}
	return append(out, env...)
}

// childOf is the only child of pid (unshare's forked child, the host's
// init).
func childOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, fmt.Errorf("the host's init: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("the host's init: unshare (pid %d) has children %q, want one", pid, f)
	}
	return strconv.Atoi(f[0])
}

// Alive reports whether the host runs.
func (h *Host) Alive() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proc != nil && h.proc.Alive()
}

// InitPid is the host's PID 1 as the root namespace sees it; 0 when the
// host is down.
func (h *Host) InitPid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || !h.proc.Alive() {
		return 0
	}
	return h.initPid
}

// Kill kills every process of the host at once (SIGKILL of its init: the
// kernel kills the rest of its PID namespace) and waits until they are
// gone.
func (h *Host) Kill() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || !h.proc.Alive() {
		return fmt.Errorf("host %s is not running", h.Name)
	}
	h.killLocked()
	return nil
}

func (h *Host) killLocked() {
	if h.initPid != 0 {
		syscall.Kill(h.initPid, syscall.SIGKILL)
	}
	// unshare --kill-child kills the init when unshare dies.
	h.proc.Signal(syscall.SIGKILL)
	<-h.proc.Exited()
	waitPidGone(h.initPid)
}

// waitPidGone waits (up to a minute) until pid is reaped.
func waitPidGone(pid int) {
	if pid == 0 {
		return
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
}

// Stop sends SIGTERM to the host's worker (through its init) and waits up
// to d for the host to end; then it kills it. It reports whether the
// worker exited by itself.
func (h *Host) Stop(d time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || !h.proc.Alive() {
		return true
	}
	syscall.Kill(h.initPid, syscall.SIGTERM)
	select {
	case <-h.proc.Exited():
		return true
	case <-time.After(d):
		h.killLocked()
		return false
	}
}

// Cut takes the host's bridge port down: the host runs on but reaches
// nothing on the bridge (Redis, S3, the webhook receiver), and nothing
// reaches it. Restore brings it back.
func (h *Host) Cut() error { return ipRun(context.Background(), "link", "set", h.veth, "down") }

// Restore undoes Cut, and waits (up to restoreTimeout) until the host's
// link to the bridge carries packets again.
func (h *Host) Restore() error {
	if err := ipRun(context.Background(), "link", "set", h.veth, "up"); err != nil {
		return err
	}
	for deadline := time.Now().Add(restoreTimeout); ; time.Sleep(50 * time.Millisecond) {
		out, err := exec.Command("ip", "-n", h.netns, "-o", "link", "show", "eth0").Output()
		// 3: the bridge port forwards.
		st, _ := os.ReadFile("/sys/class/net/" + h.veth + "/brport/state")
		if err == nil && strings.Contains(string(out), "LOWER_UP") && strings.TrimSpace(string(st)) == "3" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %s: link not up %s after Restore: %s", h.Name, restoreTimeout, out)
		}
	}
}

// restoreTimeout is how long Restore waits for the link to come up.
const restoreTimeout = 10 * time.Second

// Exec runs a command inside the running host's mount, network, PID and
// UTS namespaces and returns its output.
func (h *Host) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	pid := h.InitPid()
	if pid == 0 {
		return nil, fmt.Errorf("host %s is not running", h.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-m", "-n", "-p", "-u", "--", name}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("%s on %s: %w: %s", name, h.Name, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return out, fmt.Errorf("%s on %s: %w", name, h.Name, err)
	}
	return out, nil
}

// WorkerIDs are the worker directories under the host's state directory
// (live workers' and dead ones' not yet swept).
func (h *Host) WorkerIDs() []string {
	dirs, _ := filepath.Glob(filepath.Join(h.StateDir, "workers", "*"))
	var ids []string
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			ids = append(ids, filepath.Base(d))
		}
	}
	return ids
}

// Close stops the host (SIGTERM, then a kill after 30s), removes what a
// reboot would (its dead workers' directories and cgroups: the processes,
// mounts and /run went with its namespaces), its state directory, its
// network namespace and its bridge port.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.mu.Unlock()
	var errs []error
	if !h.Stop(30 * time.Second) {
		errs = append(errs, fmt.Errorf("host %s: the worker did not stop within 30s of SIGTERM; killed", h.Name))
	}
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	errs = append(errs, h.reboot())
	if err := os.RemoveAll(h.StateDir); err != nil {
		errs = append(errs, err)
	}
	ctx := context.Background()
	if _, err := os.Stat("/run/netns/" + h.netns); err == nil {
		errs = append(errs, ipRun(ctx, "netns", "del", h.netns))
	}
	// Deleting the namespace deletes the pair, soon.
	for deadline := time.Now().Add(5 * time.Second); linkExists(h.veth) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if linkExists(h.veth) {
		if err := ipRun(ctx, "link", "del", h.veth); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reboot removes what the host's dead workers left outside its
// namespaces: their runsc state, directories and cgroups. Call it with the
// host down.
func (h *Host) reboot() error {
	var errs []error
	for _, id := range h.WorkerIDs() {
		dir := filepath.Join(h.StateDir, "workers", id)
		if mounts, _ := runsc.MountsUnder(dir); len(mounts) > 0 {
			errs = append(errs, fmt.Errorf("host %s: still mounted in the root namespace: %v", h.Name, mounts))
			continue
		}
		if err := runsc.RemoveCgroups(cgroupParent + "/" + id); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
