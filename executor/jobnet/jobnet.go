// Package jobnet gives a sandbox a network of its own whose only reachable
// address is its egress proxy: a network namespace (handed to runsc with
// --network=sandbox), a veth pair with a /30 from a host-wide pool, and
// nftables rules owned by the worker that accept the job's traffic to its
// proxy port on the host side of its pair and refuse everything else.
//
// Nothing a job sends is routed: every packet arriving on a job's interface
// is redirected to the host side of its pair (its destination address
// becomes that address; the port is kept), so it reaches the host's input
// path whatever it was addressed to and whatever the host's forwarding
// setting. There, the job's own rule accepts TCP to its proxy port that was
// addressed to it in the first place; the job's counter counts the rest,
// which is refused at once — TCP with a reset, anything else with an ICMP
// port unreachable — so a tool that ignores the proxy fails with
// "connection refused" instead of waiting for its timeout, and the job's
// result reports the attempt (Net.Bypass). Forwarding to or from a job's
// interface is dropped as well.
//
// Every resource is recorded in a lease file in a host-wide directory
// (/run/sandq/net), named by the pair's address and taken under a host-wide
// lock, so no two sandboxes of any workers share an address, and the
// resources of a worker that died are found and removed by the next one.
package jobnet

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// IfPrefix starts the name of every job interface on the host.
const IfPrefix = "sq"

const (
	tableName = "sandq"
	// baseTag marks the forward chain's drops. Earlier versions also
	// ended the input chain with a drop so marked; a worker of such a
	// version may share the host, and that drop may follow the refusals.
	baseTag = "sandq:base"
	// refuseTag marks the input chain's final refusals, redirectTag the
	// nat chain's redirect.
	refuseTag   = "sandq:base:refuse"
	redirectTag = "sandq:base:redirect"
	// bypassSuffix ends the tag of a job's counter rule.
	bypassSuffix = ":bypass"
	// natPriority runs the redirect before other destination NAT (such as
	// a container engine's published ports, at -100), so that it decides
	// every job packet's destination.
	natPriority = -110
)

// Config sets up a Manager.
type Config struct {
	// Pool is split into /30s, one per networked sandbox. Default 10.200.0.0/16.
	Pool netip.Prefix
	// Dir holds the lease files and the lock, host-wide. Default
	// /run/sandq/net (cleared at boot, like the namespaces it describes).
	Dir string
	// WorkerID owns the leases and rules this manager makes.
	WorkerID string
	// LockPath is a file the worker holds an exclusive flock on while it
	// lives; recorded in leases so any worker can tell a dead owner.
	LockPath string
	// ProxyPort is the port the job may reach on its host-side address.
	// Default 3128.
	ProxyPort uint16
}

// Manager makes and removes job networks for one worker.
type Manager struct {
	cfg   Config
	dir   string
	table *nftables.Table

	mu   sync.Mutex
	mine map[string]*Net // this manager's live networks, by sandbox
	stop chan struct{}
	done chan struct{}
}

// Net is one sandbox's network.
type Net struct {
	// Netns is the path of the network namespace, for the OCI spec.
	Netns string
	// Host is the host side's address, where the proxy listens.
	Host netip.Addr
	// Sandbox is the sandbox side's address, the source of its traffic.
	Sandbox netip.Addr
	// Proxy is Host:ProxyPort.
	Proxy netip.AddrPort
	lease lease
	m     *Manager
	// carried is what the job's counter had counted when its rules were
	// put back (see Manager.ensure).
	carried Bypass
}

// Bypass counts what a sandbox sent that was not for its proxy: packets
// the firewall refused (each TCP connection attempt or datagram is one),
// and their bytes.
type Bypass struct {
	Packets uint64
	Bytes   uint64
}

type lease struct {
	Host    string `json:"host"`
	Worker  string `json:"worker"`
	Sandbox string `json:"sandbox"`
	Netns   string `json:"netns"`
	HostIf  string `json:"host_if"`
	PeerIf  string `json:"peer_if"`
	Lock    string `json:"lock"`
}

// New checks the pool and installs the base firewall rules (idempotent; the
// same for every worker on the host).
func New(cfg Config) (*Manager, error) {
	if !cfg.Pool.IsValid() {
		cfg.Pool = netip.MustParsePrefix("10.200.0.0/16")
	}
	if cfg.ProxyPort == 0 {
		cfg.ProxyPort = 3128
	}
	if !cfg.Pool.Addr().Is4() || cfg.Pool.Bits() > 30 {
		return nil, fmt.Errorf("network pool %s: want an IPv4 prefix of /30 or larger", cfg.Pool)
	}
	if cfg.Dir == "" {
		cfg.Dir = "/run/sandq/net"
	}
	if cfg.WorkerID == "" {
		return nil, errors.New("jobnet: worker ID is required")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the ip command (iproute2) is required for job networks: %w", err)
	}
	m := &Manager{cfg: cfg, dir: cfg.Dir, table: &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}, mine: map[string]*Net{}}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, err
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := m.installBase(); err != nil {
		return nil, fmt.Errorf("firewall base rules: %w", err)
	}
	m.removeTornLeases()
	return m, nil
}

// Watch re-checks the firewall every interval until Close: if the table,
// its chains or rules were flushed (say by an nftables service restart),
// it puts back the base rules and this manager's accept rules at once.
// onRepair is told what was repaired.
func (m *Manager) Watch(interval time.Duration, onRepair func(error)) {
	m.mu.Lock()
	if m.stop != nil {
		m.mu.Unlock()
		return
	}
	// The goroutine keeps its own copies: Close clears the fields before it
	// closes stop, and a loop that re-read m.stop would then wait on nil.
	stop, done := make(chan struct{}), make(chan struct{})
	m.stop, m.done = stop, done
	m.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if repaired, err := m.Ensure(); repaired || err != nil {
					onRepair(errors.Join(fmt.Errorf("firewall rules were missing and have been restored"), err))
				}
			}
		}
	}()
}

// Close stops Watch.
func (m *Manager) Close() {
	m.mu.Lock()
	stop, done := m.stop, m.done
	m.stop = nil
	m.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// Ensure puts back whatever is missing of the base rules and of this
// manager's accept rules; it reports whether anything was.
func (m *Manager) Ensure() (bool, error) {
	unlock, err := m.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	return m.ensure()
}

func (m *Manager) ensure() (bool, error) {
	repaired, err := m.baseMissing()
	if err != nil {
		return false, err
	}
	if repaired {
		if err := m.installBase(); err != nil {
			return true, err
		}
	}
	c, err := nftables.New()
	if err != nil {
		return repaired, err
	}
	input, _ := m.chains()
	rules, err := c.GetRules(m.table, input)
	if err != nil {
		return repaired, err
	}
	have := map[string]*nftables.Rule{}
	for _, r := range rules {
		have[string(r.UserData)] = r
	}
	m.mu.Lock()
	mine := make([]*Net, 0, len(m.mine))
	for _, n := range m.mine {
		mine = append(mine, n)
	}
	m.mu.Unlock()
	missing := 0
	for _, n := range mine {
		tag := string(ruleTag(n.lease.Worker, n.lease.Sandbox))
		accept, counter := have[tag], have[tag+bypassSuffix]
		if accept != nil && counter != nil {
			continue
		}
		// The accept rule must come before the counter: put both back,
		// in order, keeping what the old counter had counted.
		missing++
		for _, r := range []*nftables.Rule{accept, counter} {
			if r == nil {
				continue
			}
			if b, ok := counted(r); ok {
				m.mu.Lock()
				n.carried.Packets += b.Packets
				n.carried.Bytes += b.Bytes
				m.mu.Unlock()
			}
			if err := c.DelRule(r); err != nil {
				return true, err
			}
		}
		m.insertJobRules(c, n.lease, n.Host, n.Sandbox)
	}
	if missing > 0 {
		repaired = true
		if err := c.Flush(); err != nil {
			return true, err
		}
	}
	return repaired, nil
}

// insertJobRules queues a job's rules at the head of the input chain: the
// accept rule, then the counter of everything else the job sends (which
// then meets the base rules' refusals).
func (m *Manager) insertJobRules(c *nftables.Conn, l lease, host, sandbox netip.Addr) {
	input, _ := m.chains()
	tag := ruleTag(l.Worker, l.Sandbox)
	// Each insert goes to the head: the counter first, so the accept
	// rule ends up before it.
	c.InsertRule(&nftables.Rule{Table: m.table, Chain: input, Exprs: bypassCounter(l), UserData: append(tag, bypassSuffix...)})
	c.InsertRule(&nftables.Rule{Table: m.table, Chain: input, Exprs: m.acceptRule(l, host, sandbox), UserData: tag})
}

// counted is the count of a rule's counter, if it has one.
func counted(r *nftables.Rule) (Bypass, bool) {
	for _, e := range r.Exprs {
		if ctr, ok := e.(*expr.Counter); ok {
			return Bypass{Packets: ctr.Packets, Bytes: ctr.Bytes}, true
		}
	}
	return Bypass{}, false
}

// baseMissing reports whether the table, a chain or a base rule is gone,
// or the refusals are no longer the input chain's last rules.
func (m *Manager) baseMissing() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	for _, b := range m.baseRules() {
		rules, err := c.GetRules(m.table, b.chain)
		if err != nil {
			return true, nil
		}
		if !baseInPlace(rules, b.tag, len(b.rules)) {
			return true, nil
		}
	}
	return false, nil
}

// isBase reports whether a rule is a base rule of this version (tag) or
// an earlier one.
func isBase(r *nftables.Rule, tag string) bool {
	t := string(r.UserData)
	return t == tag || t == baseTag
}

// baseInPlace reports whether rules end with exactly want base rules
// tagged tag, followed by nothing but an earlier version's base rules.
func baseInPlace(rules []*nftables.Rule, tag string, want int) bool {
	first := slices.IndexFunc(rules, func(r *nftables.Rule) bool { return isBase(r, tag) })
	if first < 0 {
		return false
	}
	n := 0
	for _, r := range rules[first:] {
		switch string(r.UserData) {
		case tag:
			n++
		case baseTag:
			if n < want {
				return false // an earlier version's rule before ours
			}
		default:
			return false // a job's rule after the base rules
		}
	}
	return n == want
}

// removeTornLeases deletes lease files that do not parse: a worker died
// between taking the file and writing it. Call with the lock held.
func (m *Manager) removeTornLeases() {
	files, _ := filepath.Glob(filepath.Join(m.dir, "*.lease"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		var l lease
		if err == nil && json.Unmarshal(b, &l) != nil {
			os.Remove(f)
		}
	}
}

// lock takes the host-wide lock that serializes pool allocation and rule
// changes among the workers of a host.
func (m *Manager) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(m.dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (m *Manager) chains() (input, forward *nftables.Chain) {
	accept := nftables.ChainPolicyAccept
	input = &nftables.Chain{Name: "input", Table: m.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	forward = &nftables.Chain{Name: "forward", Table: m.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	return input, forward
}

func (m *Manager) natChain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: "prerouting", Table: m.table, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(natPriority), Policy: &accept}
}

type baseChain struct {
	chain *nftables.Chain
	tag   string
	rules [][]expr.Any
}

// baseRules are the rules every worker of the host shares, per chain; each
// chain ends with its own.
func (m *Manager) baseRules() []baseChain {
	input, forward := m.chains()
	return []baseChain{
		// Whatever a job's own accept rule (at the head) did not accept is
		// refused: TCP with a reset, the rest with an ICMP port
		// unreachable ("connection refused" either way).
		{input, refuseTag, [][]expr.Any{ifPrefixReject(true), ifPrefixReject(false)}},
		// Nothing is routed for a job, even where IP forwarding is on
		// (nothing should get here: see the redirect).
		{forward, baseTag, [][]expr.Any{ifPrefixDrop(expr.MetaKeyIIFNAME), ifPrefixDrop(expr.MetaKeyOIFNAME)}},
		// Every packet from a job goes to the host side of its pair.
		{m.natChain(), redirectTag, [][]expr.Any{ifPrefixRedirect()}},
	}
}

// installBase makes table inet sandq with the base rules: in prerouting
// (nat), the redirect of everything that arrives on a job interface to that
// interface's own address; in input, final rules refusing everything that
// arrives on a job interface (per-job accepts and counters go before them);
// in forward, rules dropping everything from or to a job interface.
func (m *Manager) installBase() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	c.AddTable(m.table)
	bases := m.baseRules()
	for _, b := range bases {
		c.AddChain(b.chain)
	}
	if err := c.Flush(); err != nil {
		return err
	}
	for _, base := range bases {
		rules, err := c.GetRules(m.table, base.chain)
		if err != nil {
			return err
		}
		if baseInPlace(rules, base.tag, len(base.rules)) {
			continue
		}
		for _, r := range rules {
			if isBase(r, base.tag) {
				c.DelRule(r)
			}
		}
		for _, e := range base.rules {
			c.AddRule(&nftables.Rule{Table: m.table, Chain: base.chain, Exprs: e, UserData: []byte(base.tag)})
		}
	}
	return c.Flush()
}

// ifPrefix matches packets whose interface (key) is a job's.
func ifPrefix(key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		// Comparing only len(Data) bytes makes this a prefix match.
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(IfPrefix)},
	}
}

func ifPrefixDrop(key expr.MetaKey) []expr.Any {
	return append(ifPrefix(key), &expr.Verdict{Kind: expr.VerdictDrop})
}

// ifPrefixReject refuses what arrives on a job interface: TCP with a reset
// (tcp true), anything else with an ICMP (or ICMPv6) port unreachable.
func ifPrefixReject(tcp bool) []expr.Any {
	e := ifPrefix(expr.MetaKeyIIFNAME)
	if tcp {
		return append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
		)
	}
	return append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
}

// ifPrefixRedirect sends what arrives on a job interface to that
// interface's own (primary) address, keeping the port: the host side of
// the job's pair.
func ifPrefixRedirect() []expr.Any {
	return append(ifPrefix(expr.MetaKeyIIFNAME), &expr.Redir{})
}

func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// acceptRule accepts TCP from the sandbox address to the proxy port on the
// host address, arriving on the pair's host interface and addressed there
// by the job (not redirected there), and nothing else.
func (m *Manager) acceptRule(l lease, host, sandbox netip.Addr) []expr.Any {
	h, s := host.As4(), sandbox.As4()
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, m.cfg.ProxyPort)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(l.HostIf)},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: s[:]},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: h[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		// Not destination-NATed: a job that sends to another address's
		// proxy port is redirected here, and refused.
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeUint32(ipsDstNAT), Xor: nativeUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nativeUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// ipsDstNAT is conntrack's IPS_DST_NAT status bit.
const ipsDstNAT = 1 << 5

// nativeUint32 is v in host byte order, as conntrack's status register
// holds it.
func nativeUint32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// bypassCounter counts everything that arrives on the job's interface and
// was not accepted: what the job sent around its proxy.
func bypassCounter(l lease) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(l.HostIf)},
		&expr.Counter{},
	}
}

func ruleTag(worker, sandbox string) []byte { return []byte("sandq:" + worker + ":" + sandbox) }

// addrs are the host and sandbox addresses of /30 number i in the pool.
func (m *Manager) addrs(i int) (host, sandbox netip.Addr) {
	base := m.cfg.Pool.Masked().Addr().As4()
	n := binary.BigEndian.Uint32(base[:]) + uint32(i)*4
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], n+1)
	host = netip.AddrFrom4(b)
	binary.BigEndian.PutUint32(b[:], n+2)
	return host, netip.AddrFrom4(b)
}

func (m *Manager) size() int { return 1 << (32 - m.cfg.Pool.Bits()) / 4 }

// Setup makes the network of sandbox: a lease on a free /30, a namespace, a
// veth pair, addresses, a default route via the host side, and the accept
// rule. On error nothing of it is left.
func (m *Manager) Setup(ctx context.Context, sandbox string) (_ *Net, err error) {
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The base rules must be in place before any job interface exists.
	if _, err := m.ensure(); err != nil {
		return nil, fmt.Errorf("firewall base rules: %w", err)
	}
	inUse := hostAddresses()
	var host, sbx netip.Addr
	for i := 0; i < m.size(); i++ {
		h, s := m.addrs(i)
		if inUse[h] || inUse[s] {
			continue // on the host already, whoever made it
		}
		f, err := os.OpenFile(m.leasePath(h), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		f.Close()
		host, sbx = h, s
		break
	}
	if !host.IsValid() {
		return nil, fmt.Errorf("network pool %s is exhausted (%d sandboxes)", m.cfg.Pool, m.size())
	}
	sum := sha256.Sum256([]byte(m.cfg.WorkerID + "/" + sandbox))
	short := hex.EncodeToString(sum[:6])
	l := lease{Host: host.String(), Worker: m.cfg.WorkerID, Lock: m.cfg.LockPath, Sandbox: sandbox, Netns: "sandq-" + m.cfg.WorkerID + "-" + short, HostIf: IfPrefix + short + "h", PeerIf: IfPrefix + short + "n"}
	b, _ := json.Marshal(l)
	if err := os.WriteFile(m.leasePath(host), b, 0o600); err != nil {
		os.Remove(m.leasePath(host))
		return nil, err
	}
	n := &Net{Netns: filepath.Join("/var/run/netns", l.Netns), lease: l, m: m, Host: host, Sandbox: sbx}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.remove(l))
		}
	}()
	n.Proxy = netip.AddrPortFrom(n.Host, m.cfg.ProxyPort)
	prefix := strconv.Itoa(30)
	if err := ip(ctx, "netns", "add", l.Netns); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, "",
		fmt.Sprintf("link add %s type veth peer name %s netns %s", l.HostIf, l.PeerIf, l.Netns),
		fmt.Sprintf("addr add %s/%s dev %s", n.Host, prefix, l.HostIf),
		fmt.Sprintf("link set %s up", l.HostIf),
	); err != nil {
		return nil, err
	}
	// No IPv6 on the host side: its link-local address would be one more
	// address for the job to try (the firewall drops it anyway).
	os.WriteFile("/proc/sys/net/ipv6/conf/"+l.HostIf+"/disable_ipv6", []byte("1"), 0o644)
	if err := ipBatch(ctx, l.Netns,
		"link set lo up",
		fmt.Sprintf("addr add %s/%s dev %s", n.Sandbox, prefix, l.PeerIf),
		fmt.Sprintf("link set %s up", l.PeerIf),
		fmt.Sprintf("route add default via %s dev %s", n.Host, l.PeerIf),
	); err != nil {
		return nil, err
	}
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	m.insertJobRules(c, l, n.Host, n.Sandbox)
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("firewall rules for %s: %w", sandbox, err)
	}
	m.mu.Lock()
	m.mine[sandbox] = n
	m.mu.Unlock()
	return n, nil
}

// hostAddresses are the IPv4 addresses configured on this host now.
func hostAddresses() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

func (m *Manager) leasePath(host netip.Addr) string {
	return filepath.Join(m.dir, host.String()+".lease")
}

// Bypass reads what the job has sent around its proxy so far (refused by
// the firewall). Read it once the sandbox is gone, before Release.
func (n *Net) Bypass() (Bypass, error) {
	c, err := nftables.New()
	if err != nil {
		return Bypass{}, fmt.Errorf("reading the bypass counter: %w", err)
	}
	input, _ := n.m.chains()
	rules, err := c.GetRules(n.m.table, input)
	if err != nil {
		return Bypass{}, fmt.Errorf("reading the bypass counter: %w", err)
	}
	tag := string(ruleTag(n.lease.Worker, n.lease.Sandbox)) + bypassSuffix
	n.m.mu.Lock()
	b := n.carried
	n.m.mu.Unlock()
	for _, r := range rules {
		if string(r.UserData) != tag {
			continue
		}
		if got, ok := counted(r); ok {
			b.Packets += got.Packets
			b.Bytes += got.Bytes
			return b, nil
		}
	}
	return b, fmt.Errorf("reading the bypass counter: the rule %s is missing", tag)
}

// Release removes the network: rules, namespace, interfaces and lease.
func (n *Net) Release() error {
	unlock, err := n.m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	n.m.mu.Lock()
	delete(n.m.mine, n.lease.Sandbox)
	n.m.mu.Unlock()
	return n.m.remove(n.lease)
}

// remove deletes everything a lease names; missing pieces are not errors.
func (m *Manager) remove(l lease) error {
	var errs []error
	tag := string(ruleTag(l.Worker, l.Sandbox))
	if err := m.deleteRules(func(t string) bool { return t == tag || t == tag+bypassSuffix }); err != nil {
		errs = append(errs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join("/var/run/netns", l.Netns)); err == nil {
		if err := ip(ctx, "netns", "delete", l.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting the namespace deletes the peer and with it the host side;
	// delete the host side too in case the namespace was never made.
	if _, err := os.Stat("/sys/class/net/" + l.HostIf); err == nil {
		if err := ip(ctx, "link", "delete", l.HostIf); err != nil && !linkGone(err) {
			errs = append(errs, err)
		}
	}
	if host, perr := netip.ParseAddr(l.Host); len(errs) == 0 && perr == nil {
		if err := os.Remove(m.leasePath(host)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// linkGone reports whether ip failed on a link that does not exist: not
// there when ip looked its name up ("Cannot find device"), or gone between
// that and the kernel's answer ("No such device"), as when the namespace
// deletion that takes it along is still under way.
func linkGone(err error) bool {
	return strings.Contains(err.Error(), "Cannot find device") || strings.Contains(err.Error(), "No such device")
}

func (m *Manager) deleteRules(match func(tag string) bool) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	input, _ := m.chains()
	rules, err := c.GetRules(m.table, input)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("list firewall rules: %w", err)
	}
	n := 0
	for _, r := range rules {
		if match(string(r.UserData)) {
			if err := c.DelRule(r); err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return c.Flush()
}

// SweepWorker removes every network a (dead) worker left: its leases'
// namespaces, interfaces and rules.
func (m *Manager) SweepWorker(worker string) error {
	unlock, err := m.lock()
	if err != nil {
		return err
	}
	defer unlock()
	m.removeTornLeases()
	leases, err := m.leases()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range leases {
		if l.Worker == worker {
			errs = append(errs, m.remove(l))
		}
	}
	// Rules whose lease file was never written or already removed.
	errs = append(errs, m.deleteRules(func(tag string) bool { return strings.HasPrefix(tag, "sandq:"+worker+":") }))
	return errors.Join(errs...)
}

func (m *Manager) leases() ([]lease, error) {
	files, err := filepath.Glob(filepath.Join(m.dir, "*.lease"))
	if err != nil {
		return nil, err
	}
	var out []lease
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var l lease
		if json.Unmarshal(b, &l) == nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// SweepDead removes the networks of every worker on this host whose lock
// is no longer held (it died), whatever its state directory.
func (m *Manager) SweepDead() error {
	ls, err := m.leases()
	if err != nil {
		return err
	}
	dead := map[string]bool{}
	for _, l := range ls {
		if l.Worker != m.cfg.WorkerID && !dead[l.Worker] && l.Lock != "" && !lockHeld(l.Lock) {
			dead[l.Worker] = true
		}
	}
	var errs []error
	for w := range dead {
		errs = append(errs, m.SweepWorker(w))
	}
	return errors.Join(errs...)
}

// lockHeld reports whether some process holds an flock on path.
func lockHeld(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false // gone with its worker
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// Resources lists what the manager's worker holds now: lease files,
// namespaces, host interfaces and firewall rules (for tests and checks).
func (m *Manager) Resources(worker string) (leases, netns, ifaces, rules []string, err error) {
	ls, err := m.leases()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	for _, l := range ls {
		if host, err := netip.ParseAddr(l.Host); err == nil && l.Worker == worker {
			leases = append(leases, m.leasePath(host))
		}
	}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "sandq-"+worker+"-") {
			netns = append(netns, e.Name())
		}
	}
	for _, l := range ls {
		if l.Worker == worker {
			if _, err := os.Stat("/sys/class/net/" + l.HostIf); err == nil {
				ifaces = append(ifaces, l.HostIf)
			}
		}
	}
	c, err := nftables.New()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	input, _ := m.chains()
	rs, err := c.GetRules(m.table, input)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	for _, r := range rs {
		if strings.HasPrefix(string(r.UserData), "sandq:"+worker+":") {
			rules = append(rules, string(r.UserData))
		}
	}
	return leases, netns, ifaces, rules, nil
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipBatch runs several ip commands in one process, inside netns if given.
func ipBatch(ctx context.Context, netns string, cmds ...string) error {
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(cmds, "; "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
