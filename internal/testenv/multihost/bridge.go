// Package multihost simulates several sandq worker hosts on one machine,
// for the scale-out scenarios (test/multihost): a Bridge in the root
// network namespace, where the shared services (Redis, S3, a webhook
// receiver) listen on the bridge's address, and Hosts attached to it.
//
// A Host is what a real worker host is to sandq, built from namespaces:
//   - its own network namespace (a veth to the bridge, an address of its
//     own, a default route via the bridge), so its job interfaces,
//     nftables table and sandbox address pool are its own;
//   - its own mount namespace, with a fresh tmpfs on /run (so /run/sandq,
//     the job-network leases and lock, and /run/netns, the sandboxes'
//     namespaces, are private to it, and vanish when it dies, as at a
//     reboot) and the sandboxes' mounts;
//   - its own PID namespace, whose init (bash, which reaps orphans) runs
//     `sandq worker`: SIGKILL of that init kills every process of the
//     host at once, runsc sandboxes included (Kill);
//   - its own UTS namespace: its hostname is its name, so the worker name
//     results record (hostname:pid) says which host ran a job;
//   - its own state directory and runsc root. The cgroup parent is the
//     machine's (the kernel's cgroup v1 hierarchy is shared); each worker
//     names its cgroups by its random worker ID, and Leftovers checks
//     those of the host's workers.
//
// Cut and Restore take the host's bridge port down and up: the host keeps
// running but reaches neither Redis nor S3. Leftovers lists what the fault
// suite checks on a host; Close removes everything of a host, after a Kill
// what a reboot would (the worker's directories and cgroups). The bridge
// and every name the package makes in the root namespace carry a random
// tag, and none starts with "sq" (the job interface prefix, which the
// worker's firewall refuses input from).
package multihost

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// namePrefix starts every interface and namespace the package makes in
// the root namespace. It must not start with jobnet.IfPrefix ("sq").
const namePrefix = "mh"

// bridgeNet is the /16 the bridge's /24 is taken from.
var bridgeNet = netip.MustParsePrefix("10.77.0.0/16")

// cmdTimeout bounds each ip command the harness runs.
const cmdTimeout = 30 * time.Second

// Bridge is the simulated hosts' network: a Linux bridge in the root
// network namespace with the first address of a /24 nothing on this
// machine uses.
type Bridge struct {
	// Name is the bridge's interface name.
	Name string
	// Addr is the bridge's address, where the shared services listen.
	Addr netip.Addr
	// Prefix is the bridge's /24.
	Prefix netip.Prefix
	tag    string

	mu    sync.Mutex
	hosts []*Host
}

// NewBridge makes a bridge on a free /24 of 10.77.0.0/16. Close removes it.
func NewBridge(ctx context.Context) (*Bridge, error) {
	tag := fmt.Sprintf("%04x", rand.IntN(1<<16))
	p, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	b := &Bridge{Name: namePrefix + "br" + tag, Prefix: p, Addr: p.Addr().Next(), tag: tag}
	if err := ipBatch(ctx, "",
		"link add "+b.Name+" type bridge",
		fmt.Sprintf("addr add %s/%d dev %s", b.Addr, p.Bits(), b.Name),
		"link set "+b.Name+" up",
	); err != nil {
		ipRun(context.WithoutCancel(ctx), "link", "del", b.Name)
		return nil, fmt.Errorf("bridge: %w", err)
	}
	return b, nil
}

// freeSubnet is a /24 of bridgeNet that no address or route on this
// machine overlaps.
func freeSubnet() (netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip route: %w", err)
	}
	used := func(p netip.Prefix) bool {
		for _, f := range strings.Fields(string(out)) {
			if q, err := netip.ParsePrefix(f); err == nil && q.Overlaps(p) {
				return true
			}
			if a, err := netip.ParseAddr(f); err == nil && p.Contains(a) {
				return true
			}
		}
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if q, err := netip.ParsePrefix(a.String()); err == nil && q.Overlaps(p) {
				return true
			}
		}
		return false
	}
	start := rand.IntN(256)
	for i := range 256 {
		third := byte((start + i) % 256)
		a := bridgeNet.Addr().As4()
		a[2] = third
		p := netip.PrefixFrom(netip.AddrFrom4(a), 24)
		if !used(p) {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in %s", bridgeNet)
}

// Close closes every host of the bridge and removes the bridge.
func (b *Bridge) Close() error {
	b.mu.Lock()
	hosts := b.hosts
	b.hosts = nil
	b.mu.Unlock()
	var errs []error
	for i := len(hosts) - 1; i >= 0; i-- {
		errs = append(errs, hosts[i].Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if linkExists(b.Name) {
		errs = append(errs, ipRun(ctx, "link", "del", b.Name))
	}
	return errors.Join(errs...)
}

// Names are the bridge's interface and every host's root-side veth and
// network namespace name: what the package made in the root namespace.
func (b *Bridge) Names() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []string{b.Name}
	for _, h := range b.hosts {
		out = append(out, h.veth, h.netns)
	}
	return out
}

// linkExists reports whether the root namespace has an interface name.
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// ipRun runs one ip command.
func ipRun(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs ip commands in one process, in network namespace netns
// (by its name under /run/netns) if given.
func ipBatch(ctx context.Context, netns string, cmds ...string) error {
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(cmds, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// SweepStale removes what a run killed before its cleanup left in the
// root namespace: the hosts' network namespaces in which no process runs
// (their veths go with them), then bridges of the harness with no port.
// A host's processes die with the test process (see Host.Start).
func SweepStale(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(name, namePrefix) {
			continue
		}
		if pids, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output(); err != nil || len(strings.TrimSpace(string(pids))) > 0 {
			continue // in use, or cannot tell
		}
		errs = append(errs, ipRun(ctx, "netns", "del", name))
	}
	out, err = exec.CommandContext(ctx, "ip", "-o", "link", "show", "type", "bridge").Output()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("ip link show: %w", err))...)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[1], namePrefix+"br") {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if ports, err := exec.CommandContext(ctx, "ip", "-o", "link", "show", "master", name).Output(); err != nil || len(strings.TrimSpace(string(ports))) > 0 {
			continue
		}
		errs = append(errs, ipRun(ctx, "link", "del", name))
	}
	return errors.Join(errs...)
}
