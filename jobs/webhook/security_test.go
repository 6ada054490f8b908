package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

// IP literals in spellings other than a dotted quad or a bracketed IPv6
// address are refused when submitted, whatever the address range and even
// with AllowPrivate: resolvers and URL parsers disagree on what they mean.
func TestCheckURLRefusesIPSpellings(t *testing.T) {
	ctx := context.Background()
	for _, host := range []string{
		"2130706433",               // 127.0.0.1 as one decimal number
		"0x7f.1",                   // hex and shortened
		"0177.0.0.1",               // octal first octet
		"127.1",                    // shortened
		"127.0.1",                  // shortened
		"0x7f000001",               // one hex number
		"017700000001",             // one octal number
		"0x7F.0x0.0x0.0x1",         // hex octets, upper case
		"127.0.0.01",               // a leading zero
		"3627734734",               // a public address (216.58.214.206) as a number
		"1.2.3.4.",                 // a trailing dot
		"08.8.8.8",                 // a leading zero on a public address
		"[fe80::1%25eth0]",         // an IPv6 zone
		"[::1%25lo]",               // an IPv6 zone on loopback
		"[2001:db8::1%251]",        // a zone on a global address
		"[127.0.0.1]",              // IPv4 in brackets
		"[0x7f.1]",                 // not an address in brackets
		"%31%32%37.1",              // percent-encoded "127.1"
		"example.0x10",             // a numeric last label
		"a.b.1234",                 // a numeric last label
		"\uff11\uff12\uff17.0.0.1", // full-width digits, which IDNA maps to "127.0.0.1"
	} {
		for _, g := range []Guard{{}, {AllowPrivate: true}} {
			raw := "http://" + host + ":8080/hook"
			err := g.CheckURL(ctx, nil, raw)
			if err == nil {
				t.Errorf("CheckURL(%q) with AllowPrivate %v accepted it", raw, g.AllowPrivate)
				continue
			}
			if !strings.Contains(err.Error(), "webhook") {
				t.Errorf("CheckURL(%q) = %q: want a message naming the webhook", raw, err)
			}
		}
	}
	// Canonical literals still go through the address-range check.
	for raw, ok := range map[string]bool{
		"http://203.0.113.7/hook":          true,
		"https://[2001:db8::7]:8443/hook":  true,
		"http://[::ffff:203.0.113.7]/hook": true,
		"http://127.0.0.1/hook":            false,
		"http://[::1]/hook":                false,
		"http://10.0.0.1/hook":             false,
		"https://hooks.example.com/x":      true,
		"https://HOOKS.Example.COM./x":     true,
		"https://under_score.example.com/": true,
	} {
		err := Guard{}.CheckURL(ctx, nil, raw)
		if ok != (err == nil) {
			t.Errorf("CheckURL(%q) = %v, want accepted %v", raw, err, ok)
		}
	}
}

// A stored URL with such a host (one submitted before the check existed)
// fails at once when delivered, with no retry. The test runs in a network
// namespace of its own, so no name is ever looked up outside this machine.
func TestDeliverRefusesIPSpellingsAtOnce(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	d := &Deliverer{Guard: allowLoopback}
	for _, host := range []string{"2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001", "[::1%25lo]"} {
		a := d.Deliver(context.Background(), "http://"+host+":"+port+"/hook", []string{mustSecret(t)}, "evt_s", []byte(`{}`))
		t.Logf("%s: %+v", host, a)
		if a.Outcome != OutcomeFailed {
			t.Errorf("%s: outcome %s (%s), want failed at once", host, a.Outcome, a.Error)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the server accepted %d connections", n)
	}
}

// Refusals a producer sees (enqueue errors, the delivery log) never name the
// address a host name resolved to: that would make the guard an oracle of
// the worker's internal DNS.
func TestRefusalsDoNotNameResolvedAddresses(t *testing.T) {
	ctx := context.Background()
	r := startDNS(t, map[string]netip.Addr{
		"private.hooks.test": netip.MustParseAddr("10.0.0.5"),
		"meta.hooks.test":    netip.MustParseAddr("169.254.169.254"),
		"v6.hooks.test":      netip.MustParseAddr("fd12:3456::9"),
	})
	for host, addr := range map[string]string{"private.hooks.test": "10.0.0.5", "meta.hooks.test": "169.254.169.254", "v6.hooks.test": "fd12:3456::9"} {
		err := Guard{}.CheckURL(ctx, r, "https://"+host+"/hook")
		if err == nil || !errors.Is(err, ErrBlockedAddress) {
			t.Errorf("%s: %v, want ErrBlockedAddress", host, err)
			continue
		}
		for _, leak := range []string{addr, "RFC 1918", "unique local", "metadata"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("%s: %q names the address it resolved to, or its kind (%s)", host, err, leak)
			}
		}
		var blocked *BlockedAddressError
		if !errors.As(err, &blocked) || !strings.Contains(blocked.Detail(), addr) {
			t.Errorf("%s: the detail for the worker's log does not name %s: %v", host, addr, err)
		}
		if !strings.Contains(err.Error(), host) {
			t.Errorf("%s: %q does not name the host", host, err)
		}
	}
	// At delivery: names that resolve to loopback, through the hosts file
	// (no DNS query) and through a DNS server, refused when dialing.
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	dr := startDNS(t, map[string]netip.Addr{"loop.hooks.test": netip.MustParseAddr("127.0.0.1")})
	for _, u := range []string{"http://localhost:" + port + "/hook", "http://loop.hooks.test:" + port + "/hook"} {
		a := (&Deliverer{Resolver: dr}).Deliver(ctx, u, []string{mustSecret(t)}, "evt_r", []byte(`{}`))
		t.Logf("%s: %+v", u, a)
		if a.Outcome != OutcomeFailed {
			t.Errorf("%s: outcome %s, want failed", u, a.Outcome)
		}
		if strings.Contains(a.Error, "127.0.0.1") || strings.Contains(a.Error, "::1") {
			t.Errorf("%s: delivery log error %q names the resolved address", u, a.Error)
		}
	}
	if a := (&Deliverer{Resolver: dr}).Deliver(ctx, "http://loop.hooks.test:"+port+"/hook", []string{mustSecret(t)}, "evt_r", []byte(`{}`)); !strings.Contains(a.Detail, "127.0.0.1 is a loopback address") {
		t.Errorf("the detail for the worker's log is %q, want the refused address", a.Detail)
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the server accepted %d connections", n)
	}
	// Connection errors do not carry the worker's or the receiver's addresses
	// either.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	a := (&Deliverer{Guard: allowLoopback}).Deliver(ctx, "http://localhost:"+closedPort+"/hook", []string{mustSecret(t)}, "evt_c", []byte(`{}`))
	t.Logf("refused: %+v", a)
	if a.Outcome != OutcomeRetry || !strings.Contains(a.Error, "connection refused") || strings.Contains(a.Error, "127.0.0.1") || strings.Contains(a.Error, "::1") {
		t.Errorf("connection refused: %+v, want a retry saying so without an address", a)
	}
}

// The worker host's own addresses are refused, even when they are public:
// a service the host binds to 0.0.0.0 must not be reachable by webhook.
// The test gives itself such an address in a network namespace of its own.
func TestGuardRefusesTheHostsOwnAddresses(t *testing.T) {
	if !inNetns(t, "198.51.100.7/32", "2001:db8::7/128") {
		return
	}
	ctx := context.Background()
	var conns atomic.Int64
	ln, err := net.Listen("tcp", ":0") // every address of this host
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { conns.Add(1) }))
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, host := range []string{"198.51.100.7", "[2001:db8::7]"} {
		u := "http://" + host + ":" + port + "/hook"
		// The address is reachable: the test is not vacuous.
		resp, err := (&http.Client{Transport: &http.Transport{}}).Get(u)
		if err != nil {
			t.Fatalf("the test server is not reachable at %s: %v", u, err)
		}
		resp.Body.Close()
		err = Guard{}.CheckURL(ctx, nil, u)
		if err == nil || !errors.Is(err, ErrBlockedAddress) || !strings.Contains(err.Error(), "this host") {
			t.Errorf("CheckURL(%s) = %v, want ErrBlockedAddress naming this host", u, err)
		}
		before := conns.Load()
		a := (&Deliverer{}).Deliver(ctx, u, []string{mustSecret(t)}, "evt_h", []byte(`{}`))
		t.Logf("%s: %+v", u, a)
		if a.Outcome != OutcomeFailed || conns.Load() != before {
			t.Errorf("%s: %+v, %d requests reached the server; want a failed attempt and none", u, a, conns.Load()-before)
		}
	}
	// Addresses of other hosts in the same public ranges are not refused.
	if err := (Guard{}).CheckURL(ctx, nil, "http://198.51.100.8:"+port+"/hook"); err != nil {
		t.Errorf("another host's address: %v", err)
	}
}
