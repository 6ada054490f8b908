package jobnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/testenv"
)

// reach reports whether a TCP connection from inside netns to addr succeeds
// within a second.
func reach(t *testing.T, netns string, addr string) bool {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("ip", "netns", "exec", netns, "timeout", "1", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port))
	return cmd.Run() == nil
}

func listen(t *testing.T, addr string) {
	t.Helper()
	testenv.Listen(t, addr)
}

// hostAddr is one of the host's own non-loopback IPv4 addresses, not one
// of these tests' own pools.
func hostAddr(t *testing.T) string {
	t.Helper()
	return testenv.HostAddress(t, netip.MustParsePrefix("10.201.0.0/16"))
}

func TestJobNetworkReachesOnlyItsProxyPort(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	m, err := New(Config{Pool: netip.MustParsePrefix("10.201.0.0/24"), Dir: t.TempDir(), WorkerID: "wtest1"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Setup(ctx, "sandbox-a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	b, err := m.Setup(ctx, "sandbox-b")
	if err != nil {
		t.Fatal(err)
	}
	if a.Host == b.Host || a.Sandbox == b.Sandbox {
		t.Fatalf("two sandboxes share addresses: %v %v", a, b)
	}
	for _, n := range []*Net{a, b} {
		listen(t, n.Proxy.String())
		listen(t, netip.AddrPortFrom(n.Host, 6379).String()) // a host service on the pair's address
	}
	other := hostAddr(t)
	listen(t, net.JoinHostPort(other, "9000"))
	listen(t, net.JoinHostPort(other, "3128"))

	aNS := "sandq-wtest1-" + a.lease.HostIf[2:14]
	if !reach(t, aNS, a.Proxy.String()) {
		t.Fatal("the job cannot reach its own proxy endpoint")
	}
	for _, dst := range []string{
		netip.AddrPortFrom(a.Host, 6379).String(), // another port on its proxy address
		b.Proxy.String(), // another job's proxy
		netip.AddrPortFrom(b.Sandbox, 3128).String(),
		net.JoinHostPort(other, "9000"), // the host's services on its other addresses
		net.JoinHostPort(other, "3128"),
		"169.254.169.254:80",
	} {
		if reach(t, aNS, dst) {
			t.Errorf("the job reached %s", dst)
		}
	}
	// Also with IP forwarding on.
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	defer os.WriteFile("/proc/sys/net/ipv4/ip_forward", fwd, 0o644)
	if reach(t, aNS, netip.AddrPortFrom(b.Sandbox, 3128).String()) || reach(t, aNS, net.JoinHostPort(other, "9000")) {
		t.Error("with forwarding on, the job reached past its proxy")
	}

	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	leases, netns, ifaces, rules, err := m.Resources("wtest1")
	if err != nil {
		t.Fatal(err)
	}
	if len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("left after release: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
}

func TestSweepWorkerRemovesADeadWorkersNetworks(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	state := t.TempDir()
	dead, err := New(Config{Pool: netip.MustParsePrefix("10.201.1.0/24"), Dir: state, WorkerID: "wdead1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"x", "y"} {
		if _, err := dead.Setup(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	live, err := New(Config{Pool: netip.MustParsePrefix("10.201.1.0/24"), Dir: state, WorkerID: "wlive1"})
	if err != nil {
		t.Fatal(err)
	}
	mine, err := live.Setup(ctx, "z")
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Release()
	if mine.Host == (netip.Addr{}) {
		t.Fatal("no address")
	}
	if err := live.SweepWorker("wdead1"); err != nil {
		t.Fatal(err)
	}
	leases, netns, ifaces, rules, _ := live.Resources("wdead1")
	if len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("dead worker's leftovers: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
	leases, netns, ifaces, rules, _ = live.Resources("wlive1")
	if len(leases) != 1 || len(netns) != 1 || len(ifaces) != 1 || len(rules) != 2 { // accept and counter
		t.Errorf("the live worker's network was touched: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
}

func TestPoolExhaustionIsAClearError(t *testing.T) {
	testenv.NeedNetns(t)
	m, err := New(Config{Pool: netip.MustParsePrefix("10.201.2.0/29"), Dir: t.TempDir(), WorkerID: "wpool1"})
	if err != nil {
		t.Fatal(err)
	}
	var nets []*Net
	defer func() {
		for _, n := range nets {
			n.Release()
		}
	}()
	for i := 0; i < 2; i++ {
		n, err := m.Setup(context.Background(), fmt.Sprint("s", i))
		if err != nil {
			t.Fatal(err)
		}
		nets = append(nets, n)
	}
	if _, err := m.Setup(context.Background(), "s2"); err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("third sandbox in a /29: %v", err)
	}
	if _, netns, _, rules, _ := m.Resources("wpool1"); len(netns) != 2 || len(rules) != 4 {
		t.Errorf("a refused setup left something: netns %v rules %v", netns, rules)
	}
}

// heldLock makes a lock file and holds an flock on it until the test ends
// (or release is called): a live worker's.
func heldLock(t *testing.T) (path string, release func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "lock")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return path, func() { f.Close() }
}

func TestSweepDeadFindsDeadOwnersByTheirLock(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	dir := t.TempDir()
	pool := netip.MustParsePrefix("10.201.3.0/24")
	deadLock, die := heldLock(t)
	liveLock, _ := heldLock(t)
	dead, err := New(Config{Pool: pool, Dir: dir, WorkerID: "wdead2", LockPath: deadLock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Setup(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	live, err := New(Config{Pool: pool, Dir: dir, WorkerID: "wlive2", LockPath: liveLock})
	if err != nil {
		t.Fatal(err)
	}
	n, err := live.Setup(ctx, "y")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Release()
	// While its lock is held, the first worker is alive: nothing is swept.
	if err := live.SweepDead(); err != nil {
		t.Fatal(err)
	}
	if _, netns, _, _, _ := live.Resources("wdead2"); len(netns) != 1 {
		t.Fatalf("a live worker's network was swept: %v", netns)
	}
	die()
	if err := live.SweepDead(); err != nil {
		t.Fatal(err)
	}
	if leases, netns, ifaces, rules, _ := live.Resources("wdead2"); len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("dead worker's network left: %v %v %v %v", leases, netns, ifaces, rules)
	}
	if _, netns, _, _, _ := live.Resources("wlive2"); len(netns) != 1 {
		t.Errorf("the live worker's network was swept: %v", netns)
	}
}

func TestEnsureRestoresAFlushedFirewall(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	m, err := New(Config{Pool: netip.MustParsePrefix("10.201.4.0/24"), Dir: t.TempDir(), WorkerID: "wflush"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Setup(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Release()
	listen(t, n.Proxy.String())
	listen(t, netip.AddrPortFrom(n.Host, 6379).String())
	ns := "sandq-wflush-" + n.lease.HostIf[2:14]
	// An nftables service restart: the whole table goes.
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.DelTable(m.table)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if !reach(t, ns, netip.AddrPortFrom(n.Host, 6379).String()) {
		t.Fatal("with the table gone the host service should be reachable (the test's premise)")
	}
	repaired, err := m.Ensure()
	if err != nil || !repaired {
		t.Fatalf("Ensure: repaired %v, %v", repaired, err)
	}
	if reach(t, ns, netip.AddrPortFrom(n.Host, 6379).String()) {
		t.Error("after Ensure the host service is still reachable")
	}
	if !reach(t, ns, n.Proxy.String()) {
		t.Error("after Ensure the job lost its proxy")
	}
	// The refusals and the redirect are back: refused at once, counted.
	target := "tcp:" + netip.AddrPortFrom(n.Host, 6379).String()
	if r := attempts(t, ns, target)[target]; len(r) != 2 || r[0] != "ConnectionRefusedError" {
		t.Errorf("after Ensure, a bypass: %v, want refused at once", r)
	}
	if b, err := n.Bypass(); err != nil || b.Packets == 0 {
		t.Errorf("after Ensure, the bypass counter: %+v, %v", b, err)
	}
	if repaired, err := m.Ensure(); err != nil || repaired {
		t.Errorf("a second Ensure repaired %v, %v", repaired, err)
	}
}

func TestAddressesInUseAreSkippedAcrossLeaseDirs(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	pool := netip.MustParsePrefix("10.201.5.0/24")
	a, err := New(Config{Pool: pool, Dir: t.TempDir(), WorkerID: "wdir1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Pool: pool, Dir: t.TempDir(), WorkerID: "wdir2"})
	if err != nil {
		t.Fatal(err)
	}
	na, err := a.Setup(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer na.Release()
	nb, err := b.Setup(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Release()
	if na.Host == nb.Host {
		t.Errorf("two lease directories handed out %s twice", na.Host)
	}
}

// Close stops Watch even when it lands while Watch is re-checking the
// firewall: with a 1ms interval it nearly always does.
func TestCloseStopsWatchMidCheck(t *testing.T) {
	testenv.NeedNetns(t)
	for i := range 20 {
		m, err := New(Config{Pool: netip.MustParsePrefix("10.201.3.0/24"), Dir: t.TempDir(), WorkerID: fmt.Sprintf("wwatch%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		m.Watch(time.Millisecond, func(error) {})
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		closed := make(chan struct{})
		go func() { m.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close did not return in 10s", i)
		}
	}
}

// Deleting a job's host interface after its namespace succeeds when the
// link is already gone, however ip says so. The namespace's deletion takes
// the pair with it asynchronously, so the link can vanish between ip's
// name lookup and the kernel's answer: the multi-host suite's worker
// logged the second error below, kept the lease and so leaked its /30.
func TestLinkGoneCoversBothWaysIPSaysIt(t *testing.T) {
	for _, c := range []struct {
		err  string
		gone bool
	}{
		{`ip link delete sqf0615f5eae47h: exit status 1: Cannot find device "sqf0615f5eae47h"`, true},
		{"ip link delete sqf0615f5eae47h: exit status 2: RTNETLINK answers: No such device", true},
		{"ip link delete sqf0615f5eae47h: exit status 2: RTNETLINK answers: Operation not permitted", false},
	} {
		if got := linkGone(errors.New(c.err)); got != c.gone {
			t.Errorf("linkGone(%q) = %v, want %v", c.err, got, c.gone)
		}
	}
}
