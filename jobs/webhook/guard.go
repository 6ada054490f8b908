package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sandq/sandq/internal/hostpattern"
)

// Guard keeps webhooks away from the worker's own networks (SSRF): a job's
// producer chooses the URL, the worker makes the request.
//
// Refused, unless AllowPrivate: loopback, private (RFC 1918, fc00::/7),
// link-local (169.254.0.0/16 with the cloud metadata address
// 169.254.169.254, fe80::/10), shared address space (CGNAT, 100.64.0.0/10),
// unspecified, multicast, "this network" (0.0.0.0/8), reserved and broadcast
// (240.0.0.0/4), site-local (fec0::/10), the IPv4-mapped (::ffff:a.b.c.d)
// and NAT64 (64:ff9b::/96) forms of refused IPv4 addresses, and every
// address of the host the guard runs on (HostAddrs), public ones included:
// a service the host binds to 0.0.0.0 is not a receiver. AllowPrivate turns
// every address check off (development, tests, receivers on the worker's
// own network).
//
// Always refused: a host that is an IP address in any spelling but a dotted
// quad (192.0.2.1) or a bracketed IPv6 address without a zone ([2001:db8::1])
// - "2130706433", "0x7f.1", "0177.0.0.1", "127.1" - since resolvers and URL
// parsers disagree on what those mean; and a host that is not a valid DNS
// name (non-ASCII names are given in their punycode "xn--" form).
//
// CheckURL is the early check, when a URL is submitted; DialContext is the
// one that holds, on the address actually connected to, so a name that
// resolves differently later (DNS rebinding) is still refused.
//
// Refusals of a host name never say what the name resolved to, nor which
// kind of address that is: a producer must not learn the worker's internal
// DNS from them. BlockedAddressError.Detail has it, for the worker's log.
type Guard struct {
	AllowPrivate bool
	// HostAddrs lists the addresses of the host the guard runs on; nil is
	// hostpattern.HostAddrs, listed again at each check (addresses change).
	HostAddrs func() ([]netip.Addr, error)
}

// ErrBlockedAddress is wrapped by every refusal of an address.
var ErrBlockedAddress = errors.New("address not allowed for webhooks")

// ErrIPSpelling is wrapped by the refusal of a host that is an IP address
// written in a form other than a dotted quad or a bracketed IPv6 address.
// It is hostpattern.ErrIPLiteral, the egress proxy's refusal too.
var ErrIPSpelling = hostpattern.ErrIPLiteral

// refusedKinds is what a refusal of a host name says instead of the address.
const refusedKinds = "loopback, private, link-local, shared, reserved, multicast, or one of this worker's own"

// BlockedAddressError is a refusal of one address.
type BlockedAddressError struct {
	Host string // the host as written in the URL; empty when refused while dialing
	// Literal is set when Host is the address itself (an IP URL): the
	// message may then name the address and its kind.
	Literal bool
	Addr    netip.Addr // the refused address: in Detail only, unless Literal
	Reason  string     // e.g. "a loopback address": in Detail only, unless Literal
}

func (e *BlockedAddressError) Error() string {
	switch {
	case e.Literal:
		return fmt.Sprintf("webhook host %s is %s, which webhooks may not reach", e.Host, e.Reason)
	case e.Host == "":
		return "refusing to connect: the webhook host resolved to an address webhooks may not reach (" + refusedKinds + ")"
	}
	return fmt.Sprintf("webhook host %s resolves to an address webhooks may not reach (%s)", e.Host, refusedKinds)
}

// Detail names the refused address and its kind, for the worker's own log.
func (e *BlockedAddressError) Detail() string {
	if e.Host == "" || e.Literal {
		return fmt.Sprintf("%s is %s", e.Addr, e.Reason)
	}
	return fmt.Sprintf("%s resolves to %s, %s", e.Host, e.Addr, e.Reason)
}

func (e *BlockedAddressError) Is(target error) bool { return target == ErrBlockedAddress }

var (
	prefCGNAT       = netip.MustParsePrefix("100.64.0.0/10")
	prefThisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	prefReserved    = netip.MustParsePrefix("240.0.0.0/4")
	prefSiteLocal   = netip.MustParsePrefix("fec0::/10")
	prefNAT64       = netip.MustParsePrefix("64:ff9b::/96")
	addrMetadata    = netip.MustParseAddr("169.254.169.254")
)

// blockedReason says why a is refused, or "" when it may be dialed.
func blockedReason(a netip.Addr) string {
	a = a.WithZone("")
	if a.Is4In6() {
		if r := blockedReason(a.Unmap()); r != "" {
			return r + " (IPv4-mapped)"
		}
		return ""
	}
	if prefNAT64.Contains(a) {
		b := a.As16()
		if r := blockedReason(netip.AddrFrom4([4]byte(b[12:]))); r != "" {
			return r + " (NAT64)"
		}
		return ""
	}
	switch {
	case a.IsUnspecified():
		return "an unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a == addrMetadata:
		return "the cloud metadata address (link-local)"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsPrivate() && a.Is4():
		return "a private address (RFC 1918)"
	case a.IsPrivate():
		return "a private address (unique local, fc00::/7)"
	case prefCGNAT.Contains(a):
		return "a shared address (CGNAT, 100.64.0.0/10)"
	case a.IsMulticast():
		return "a multicast address"
	case prefThisNetwork.Contains(a):
		return "a \"this network\" address (0.0.0.0/8)"
	case prefReserved.Contains(a):
		return "a reserved or broadcast address (240.0.0.0/4)"
	case prefSiteLocal.Contains(a):
		return "a site-local address (fec0::/10)"
	}
	return ""
}

// reasonHostAddr is the reason given for an address of this host.
const reasonHostAddr = "an address of this host (the worker's own)"

// hostAddrs lists this host's addresses.
func (g Guard) hostAddrs() ([]netip.Addr, error) {
	if g.HostAddrs != nil {
		return g.HostAddrs()
	}
	return hostpattern.HostAddrs()
}

// blocked says why a is refused, or "" when it may be dialed; own are the
// host's own addresses.
func blocked(a netip.Addr, own []netip.Addr) string {
	if r := blockedReason(a); r != "" {
		return r
	}
	u := a.WithZone("").Unmap()
	if prefNAT64.Contains(u) {
		b := u.As16()
		u = netip.AddrFrom4([4]byte(b[12:]))
	}
	for _, o := range own {
		if o.WithZone("").Unmap() == u {
			return reasonHostAddr
		}
	}
	return ""
}

// checkAddr refuses a unless AllowPrivate; host is as written in the URL
// and literal says it is a itself.
func (g Guard) checkAddr(host string, literal bool, a netip.Addr, own []netip.Addr) error {
	if g.AllowPrivate {
		return nil
	}
	if r := blocked(a, own); r != "" {
		return &BlockedAddressError{Host: host, Literal: literal, Addr: a.WithZone(""), Reason: r}
	}
	return nil
}

// parseURL checks what does not depend on name resolution, and returns the
// address of an IP host (zero for a name). Its errors never repeat the URL,
// whose query may hold a token.
func parseURL(raw string) (*url.URL, netip.Addr, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, netip.Addr{}, fmt.Errorf("webhook URL is not a valid URL: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	case "":
		return nil, netip.Addr{}, errors.New("webhook URL has no scheme: it must be an absolute http:// or https:// URL")
	default:
		return nil, netip.Addr{}, fmt.Errorf("webhook URL has scheme %q: only http and https are allowed", u.Scheme)
	}
	if u.User != nil {
		return nil, netip.Addr{}, errors.New("webhook URL must not contain credentials (user:password@); put a token in the path or query instead")
	}
	if u.Hostname() == "" {
		return nil, netip.Addr{}, errors.New("webhook URL has no host")
	}
	if p := u.Port(); p == "0" {
		return nil, netip.Addr{}, errors.New("webhook URL has port 0")
	}
	addr, err := checkHost(u)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	return u, addr, nil
}

// checkHost refuses a host that is an IP address in any spelling but a
// dotted quad or a bracketed IPv6 address without a zone, or that is not a
// valid DNS name. It returns the address of an IP host, zero for a name.
func checkHost(u *url.URL) (netip.Addr, error) {
	host := u.Hostname()
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(host)
		switch {
		case err != nil || !a.Is6():
			return netip.Addr{}, checkErrorf(ErrIPSpelling, "webhook host [%s] is not an IPv6 address: only IPv6 addresses go in brackets", host)
		case a.Zone() != "":
			return netip.Addr{}, checkErrorf(ErrIPSpelling, "webhook host [%s] has an IPv6 zone: a zone names an interface of the sending machine, not a receiver", host)
		}
		return a, nil
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		// netip takes only four decimal octets without leading zeros.
		return a, nil
	}
	if _, err := hostpattern.NormalizeHost(host); err != nil {
		if errors.Is(err, hostpattern.ErrIPLiteral) {
			return netip.Addr{}, checkErrorf(ErrIPSpelling, "webhook host %q is an IP address in a non-standard spelling (one number, hex, octal, leading zeros, fewer than four parts or a trailing dot): write an IPv4 address as four decimal numbers like 192.0.2.1, an IPv6 address in brackets like [2001:db8::1], or use a host name", host)
		}
		return netip.Addr{}, fmt.Errorf("webhook host is not a valid host name: %w", err)
	}
	return netip.Addr{}, nil
}

// CheckURL checks a webhook URL when it is submitted: scheme http or https,
// a host, no user:password@, no IP address in another spelling than a
// dotted quad or a bracketed IPv6 address; an IP host in a refused range or
// of this host, or the names localhost and *.localhost, are refused. When r
// is not nil the name is resolved now and refused if any of its addresses
// is; a name that does not resolve is accepted, since DialContext checks
// again at delivery. Errors name the problem, and not the whole URL nor
// what a name resolved to.
func (g Guard) CheckURL(ctx context.Context, r *net.Resolver, raw string) error {
	u, addr, err := parseURL(raw)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if g.AllowPrivate {
		return nil
	}
	// Listing fails only when netlink does; the dial check holds then.
	own, _ := g.hostAddrs()
	if addr.IsValid() {
		return g.checkAddr(host, true, addr, own)
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return fmt.Errorf("refusing %s: localhost names are loopback, and private addresses are not allowed: %w", host, ErrBlockedAddress)
	}
	if r == nil {
		return nil
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("resolve webhook host %s: %w", host, ctx.Err())
		}
		return nil // not resolvable now; DialContext checks at delivery
	}
	for _, a := range addrs {
		if err := g.checkAddr(host, false, a, own); err != nil {
			return err
		}
	}
	return nil
}

// DialContext returns a dial function for an http.Transport that refuses,
// at connect time, the address actually dialed when it is in a refused range
// or is one of this host's (unless AllowPrivate). The check runs in
// net.Dialer.Control, after name resolution, for every address tried.
func (g Guard) DialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return g.dialContext(timeout, nil)
}

// dialContext is DialContext resolving names with r (nil: the default
// resolver). The host's addresses are listed once per dial function.
func (g Guard) dialContext(timeout time.Duration, r *net.Resolver) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var (
		once   sync.Once
		own    []netip.Addr
		ownErr error
	)
	d := &net.Dialer{
		Timeout:  timeout,
		Resolver: r,
		Control: func(network, address string, _ syscall.RawConn) error {
			if g.AllowPrivate {
				return nil
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("refusing to connect to %q: not an IP address and port: %w", address, ErrBlockedAddress)
			}
			once.Do(func() { own, ownErr = g.hostAddrs() })
			if ownErr != nil {
				// Fail closed, and retry later: the address may be this host's.
				return ownErr
			}
			return g.checkAddr("", false, ap.Addr(), own)
		},
	}
	return d.DialContext
}
