package jobnet

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/sandq/sandq/internal/testenv"
)

// attempts runs testenv.BypassProbe (a 4s timeout a target) in netns and
// returns its lines by target.
func attempts(t *testing.T, netns string, targets ...string) map[string][]string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", netns, "python3", "-c", testenv.BypassProbe, "4"}, targets...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("attempts from %s: %v\n%s", netns, err, out)
	}
	return testenv.ProbeResults(string(out))
}

// standIn makes a stand-in host (testenv.StandInHost): a network
// namespace of its own behind a veth pair on 10.201.9.0/30 (the host side
// .1, the stand-in .2, routed from the host), with a TCP listener on port
// 9999. It stands for any address beyond the host that a job might try to
// reach directly.
func standIn(t *testing.T) netip.Addr {
	t.Helper()
	addr, _ := testenv.StandInHost(t, testenv.StandInNet{Name: "sandq-test-standin", HostIf: "tstin0h", PeerIf: "tstin0n", Subnet: netip.MustParsePrefix("10.201.9.0/30")})
	return addr
}

// TestBypassIsRefusedAtOnce: whatever a job sends that is not for its proxy
// is refused at once (TCP reset, ICMP port unreachable), whether it is
// addressed to the host or beyond it, instead of being dropped silently
// until the job's own timeout.
func TestBypassIsRefusedAtOnce(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	far := standIn(t)
	m, err := New(Config{Pool: netip.MustParsePrefix("10.201.6.0/24"), Dir: t.TempDir(), WorkerID: "wbypass"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Setup(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Release()
	other, err := m.Setup(ctx, "o")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	listen(t, n.Proxy.String())
	listen(t, other.Proxy.String())
	listen(t, netip.AddrPortFrom(n.Host, 6379).String())
	listen(t, net.JoinHostPort(hostAddr(t), "9000"))
	ns := "sandq-wbypass-" + n.lease.HostIf[2:14]

	// The stand-in answers from the host itself: the premise.
	if c, err := net.DialTimeout("tcp", netip.AddrPortFrom(far, 9999).String(), 2e9); err != nil {
		t.Fatalf("the stand-in host does not answer the host: %v", err)
	} else {
		c.Close()
	}
	bypass := []string{
		"tcp:" + n.Host.String() + ":6379", // a host service on the job's gateway
		"tcp:" + hostAddr(t) + ":9000",     // on the host's own address
		"tcp:" + far.String() + ":9999",    // a host beyond this one
		"tcp:" + far.String() + ":3128",    // ... on the proxy's port
		"tcp:" + other.Proxy.String(),      // another job's proxy
		"udp:" + n.Host.String() + ":53",   // DNS on the gateway
		"udp:" + far.String() + ":53",      // DNS beyond
	}
	proxy := "tcp:" + n.Proxy.String()
	got := attempts(t, ns, append(append([]string{proxy}, bypass...), proxy)...)
	if r := got[proxy]; len(r) != 2 || r[0] != "connected" {
		t.Fatalf("the job cannot reach its proxy: %v", got)
	}
	for _, target := range bypass {
		r := got[target]
		// Refused, not timed out (the probe's timeout would raise
		// TimeoutError); how fast is measured, not asserted.
		if len(r) != 2 || r[0] != "ConnectionRefusedError" {
			t.Errorf("%s: %v, want ConnectionRefusedError", target, r)
		} else {
			t.Logf("%s: refused after %ss", target, r[1])
		}
	}
	// Each attempt is one packet refused, counted for this job alone.
	b, err := n.Bypass()
	if err != nil {
		t.Fatal(err)
	}
	if b.Packets != uint64(len(bypass)) || b.Bytes < 40*b.Packets {
		t.Errorf("bypass counted %+v, want %d packets", b, len(bypass))
	}
	if b, err := other.Bypass(); err != nil || b.Packets != 0 {
		t.Errorf("the other job's bypass: %+v, %v; want none", b, err)
	}
	// The count survives a repair of the job's rules.
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	input, _ := m.chains()
	rules, err := c.GetRules(m.table, input)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if string(r.UserData) == string(ruleTag(n.lease.Worker, n.lease.Sandbox)) {
			c.DelRule(r) // the accept rule: the counter must come after it again
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if repaired, err := m.Ensure(); !repaired || err != nil {
		t.Fatalf("Ensure after the accept rule went: %v %v", repaired, err)
	}
	got = attempts(t, ns, proxy, bypass[0])
	if r := got[proxy]; len(r) != 2 || r[0] != "connected" {
		t.Errorf("after the repair the job cannot reach its proxy: %v", got)
	}
	if after, err := n.Bypass(); err != nil || after.Packets != b.Packets+1 {
		t.Errorf("bypass after a repair and one more attempt: %+v, %v; want %d packets", after, err, b.Packets+1)
	}
}

// TestBaseRulesBesideAnEarlierVersion: a worker of an earlier version on
// the same host ends the input chain with its own drop. Its rule may stay
// after the refusals (it is never reached), but never before them, and the
// two versions do not undo each other's rules on every check.
func TestBaseRulesBesideAnEarlierVersion(t *testing.T) {
	testenv.NeedNetns(t)
	ctx := context.Background()
	m, err := New(Config{Pool: netip.MustParsePrefix("10.201.8.0/24"), Dir: t.TempDir(), WorkerID: "wolder"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Setup(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Release()
	listen(t, n.Proxy.String())
	ns := "sandq-wolder-" + n.lease.HostIf[2:14]
	input, _ := m.chains()
	legacyDrop := func(insert bool) {
		t.Helper()
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		r := &nftables.Rule{Table: m.table, Chain: input, Exprs: ifPrefixDrop(expr.MetaKeyIIFNAME), UserData: []byte(baseTag)}
		if insert {
			c.InsertRule(r)
		} else {
			c.AddRule(r)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	refusedAtOnce := func() {
		t.Helper()
		target := "tcp:" + netip.AddrPortFrom(n.Host, 6379).String()
		if r := attempts(t, ns, target)[target]; len(r) != 2 || r[0] != "ConnectionRefusedError" {
			t.Errorf("bypass: %v, want refused at once", r)
		}
	}

	// The earlier version appends its drop after the refusals: left alone.
	legacyDrop(false)
	if repaired, err := m.Ensure(); repaired || err != nil {
		t.Errorf("Ensure with an earlier version's drop after the refusals: repaired %v, %v", repaired, err)
	}
	refusedAtOnce()
	// Before them (it was there first): the refusals go back in front.
	c, _ := nftables.New()
	rules, _ := c.GetRules(m.table, input)
	for _, r := range rules {
		if string(r.UserData) == baseTag {
			c.DelRule(r)
		}
	}
	c.Flush()
	legacyDrop(true)
	if repaired, err := m.Ensure(); !repaired || err != nil {
		t.Errorf("Ensure with an earlier version's drop before the refusals: repaired %v, %v", repaired, err)
	}
	refusedAtOnce()
	if repaired, err := m.Ensure(); repaired || err != nil {
		t.Errorf("a second Ensure: repaired %v, %v", repaired, err)
	}
}
