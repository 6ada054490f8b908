package multihost

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/testenv"
)

// fakeWorker stands in for `sandq worker` (called as BIN worker
// --state-dir DIR): it makes a worker directory, leaves a process
// running beside itself, writes its hostname and says it started.
const fakeWorker = `#!/bin/bash
mkdir -p "$3/workers/wfake"
sleep 1000 &
hostname > "$3/hostname"
echo "worker started"
wait`

// processesIn lists the processes in the PID namespace of pid.
func processesIn(t *testing.T, pid int) []int {
	t.Helper()
	ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && l == ns {
			out = append(out, p)
		}
	}
	return out
}

// reaches reports whether the host can open a TCP connection to addr
// (in three tries of 2 s).
func reaches(h *Host, addr string) bool {
	host, port, _ := net.SplitHostPort(addr)
	for range 3 {
		if _, err := h.Exec(context.Background(), "timeout", "2", "bash", "-c", "echo > /dev/tcp/"+host+"/"+port); err == nil {
			return true
		}
	}
	return false
}

// A host has its own hostname, address and namespaces; Cut stops it
// reaching the bridge and Restore brings it back; Kill ends all its
// processes at once; Close (with the bridge's) leaves nothing of it on
// the machine.
func TestHostLifecycle(t *testing.T) {
	testenv.NeedNetns(t)
	testenv.NeedBinary(t, "nsenter", "unshare", "bash")
	ctx := context.Background()
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-sandq")
	if err := os.WriteFile(bin, []byte(fakeWorker), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := NewBridge(ctx)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			b.Close()
		}
	})
	l, err := net.Listen("tcp", net.JoinHostPort(b.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var hosts []*Host
	for i := range 2 {
		h, err := b.NewHost(ctx, Config{Dir: filepath.Join(dir, "h"+strconv.Itoa(i)), Bin: bin})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	h1, h2 := hosts[0], hosts[1]
	for _, h := range hosts {
		name, _ := os.ReadFile(filepath.Join(h.StateDir, "hostname"))
		if strings.TrimSpace(string(name)) != h.Name {
			t.Errorf("host %s has hostname %q", h.Name, name)
		}
		if !reaches(h, l.Addr().String()) {
			t.Errorf("host %s cannot reach the bridge", h.Name)
		}
		if out, _ := h.Exec(ctx, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(string(out), h.Addr.String()+"/24") {
			t.Errorf("host %s: eth0 %q, want %s", h.Name, out, h.Addr)
		}
	}
	if err := h1.Cut(); err != nil {
		t.Fatal(err)
	}
	if reaches(h1, l.Addr().String()) {
		t.Errorf("cut host %s still reaches the bridge", h1.Name)
	}
	if !reaches(h2, l.Addr().String()) {
		t.Errorf("host %s lost the bridge when %s was cut", h2.Name, h1.Name)
	}
	if err := h1.Restore(); err != nil {
		t.Fatal(err)
	}
	if !reaches(h1, l.Addr().String()) {
		t.Errorf("restored host %s cannot reach the bridge", h1.Name)
	}

	procs := processesIn(t, h1.InitPid())
	if len(procs) < 3 { // init, worker, its sleep
		t.Errorf("host %s runs %v, want its init, worker and the worker's child", h1.Name, procs)
	}
	if err := h1.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if _, err := os.Stat("/proc/" + strconv.Itoa(p)); err == nil {
			t.Errorf("process %d of the killed host still exists", p)
		}
	}
	left, err := h1.Leftovers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(left.WorkerDirs) != 1 {
		t.Errorf("killed host: leftovers %s, want its worker's directory (for the reboot to clean)", left)
	}
	if err := h1.Start(); err != nil {
		t.Fatalf("restart after a kill: %v", err)
	}
	if !h1.Alive() || !h2.Alive() {
		t.Errorf("hosts alive: %v %v", h1.Alive(), h2.Alive())
	}

	names := b.Names()
	closed = true
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if linkExists(n) {
			t.Errorf("interface %s left after Close", n)
		}
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			t.Errorf("network namespace %s left after Close", n)
		}
	}
	for _, h := range hosts {
		if _, err := os.Stat(h.StateDir); err == nil {
			t.Errorf("state dir %s left after Close", h.StateDir)
		}
		if h.Alive() {
			t.Errorf("host %s runs after Close", h.Name)
		}
	}
}

// A host with no directory or binary is refused, and nothing is made.
func TestNewHostRefusesIncompleteConfig(t *testing.T) {
	testenv.NeedNetns(t)
	b, err := NewBridge(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.NewHost(context.Background(), Config{Bin: "/bin/true"}); err == nil || !strings.Contains(err.Error(), "needs Dir and Bin") {
		t.Errorf("host without Dir: %v", err)
	}
	if n := len(b.Names()); n != 1 {
		t.Errorf("after a refused host the bridge has %v", b.Names())
	}
}

// Hosts of one name (each scenario's h1) get distinct namespaces and
// links, and closing one leaves the other's.
func TestHostsMayShareAName(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	b, err := NewBridge(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var hosts []*Host
	for i := range 2 {
		h, err := b.NewHost(ctx, Config{Name: "same", Dir: filepath.Join(t.TempDir(), strconv.Itoa(i)), Bin: "/bin/true"})
		if err != nil {
			t.Fatalf("host %d named %q: %v", i, "same", err)
		}
		hosts = append(hosts, h)
	}
	if hosts[0].netns == hosts[1].netns || hosts[0].Addr == hosts[1].Addr {
		t.Fatalf("two hosts share namespace %s or address %s", hosts[0].netns, hosts[0].Addr)
	}
	if err := hosts[0].Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + hosts[1].netns); err != nil {
		t.Errorf("closing one host removed the other's namespace: %v", err)
	}
}

// TestSweepStale: what a killed run left (a host namespace with no
// process, a bridge with no port) goes; a namespace in use stays.
func TestSweepStale(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedNetns(t)
	ctx := context.Background()
	stale, busy, br := namePrefix+"stalens", namePrefix+"busyns", namePrefix+"brstale"
	for _, cmd := range [][]string{{"netns", "add", stale}, {"netns", "add", busy}, {"link", "add", br, "type", "bridge"}} {
		if err := ipRun(ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ipRun(ctx, "netns", "del", stale)
		ipRun(ctx, "netns", "del", busy)
		ipRun(ctx, "link", "del", br)
	})
	sleeper := exec.Command("ip", "netns", "exec", busy, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if out, _ := exec.Command("ip", "netns", "pids", busy).Output(); len(out) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sleeper never showed in its namespace")
		}
	}
	if err := SweepStale(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + stale); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s still there (%v)", stale, err)
	}
	if _, err := os.Stat("/run/netns/" + busy); err != nil {
		t.Errorf("namespace %s in use was removed: %v", busy, err)
	}
	if err := exec.Command("ip", "link", "show", br).Run(); err == nil {
		t.Errorf("stale bridge %s still there", br)
	}
}
