package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Guard keeps webhooks away from the worker's own networks (SSRF): a job's
// producer chooses the URL, the worker makes the request.
//
// Refused, unless AllowPrivate: loopback, private (RFC 1918, fc00::/7),
// link-local (169.254.0.0/16 with the cloud metadata address
// 169.254.169.254, fe80::/10), shared address space (CGNAT, 100.64.0.0/10),
// unspecified, multicast, "this network" (0.0.0.0/8), reserved and broadcast
// (240.0.0.0/4), site-local (fec0::/10), and the IPv4-mapped (::ffff:a.b.c.d)
// and NAT64 (64:ff9b::/96) forms of refused IPv4 addresses. AllowPrivate
// turns every address check off (development, tests, receivers on the
// worker's own network).
//
// CheckURL is the early check, when a URL is submitted; DialContext is the
// one that holds, on the address actually connected to, so a name that
// resolves differently later (DNS rebinding) is still refused.
type Guard struct{ AllowPrivate bool }

// ErrBlockedAddress is wrapped by every refusal of an address.
var ErrBlockedAddress = errors.New("address not allowed for webhooks")

// BlockedAddressError is a refusal of one address.
type BlockedAddressError struct {
	Host   string     // the host as written in the URL; empty when refused while dialing
	Addr   netip.Addr // the refused address
	Reason string     // e.g. "a loopback address"
}

func (e *BlockedAddressError) Error() string {
	switch e.Host {
	case "":
		return fmt.Sprintf("refusing to connect to %s: it is %s, and private addresses are not allowed", e.Addr, e.Reason)
	case e.Addr.String():
		return fmt.Sprintf("webhook host %s is %s, and private addresses are not allowed", e.Host, e.Reason)
	}
	return fmt.Sprintf("webhook host %s resolves to %s, %s, and private addresses are not allowed", e.Host, e.Addr, e.Reason)
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

// checkAddr refuses a unless AllowPrivate.
func (g Guard) checkAddr(host string, a netip.Addr) error {
	if g.AllowPrivate {
		return nil
	}
	if r := blockedReason(a); r != "" {
		return &BlockedAddressError{Host: host, Addr: a.WithZone(""), Reason: r}
	}
	return nil
}

// parseURL checks what does not depend on name resolution. Its errors never
// repeat the URL, whose query may hold a token.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("webhook URL is not a valid URL: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	case "":
		return nil, errors.New("webhook URL has no scheme: it must be an absolute http:// or https:// URL")
	default:
		return nil, fmt.Errorf("webhook URL has scheme %q: only http and https are allowed", u.Scheme)
	}
	if u.User != nil {
		return nil, errors.New("webhook URL must not contain credentials (user:password@); put a token in the path or query instead")
	}
	if u.Hostname() == "" {
		return nil, errors.New("webhook URL has no host")
	}
	if p := u.Port(); p == "0" {
		return nil, errors.New("webhook URL has port 0")
	}
	return u, nil
}

// CheckURL checks a webhook URL when it is submitted: scheme http or https,
// a host, no user:password@; an IP host in a refused range, or the names
// localhost and *.localhost, are refused. When r is not nil the name is
// resolved now and refused if any of its addresses is; a name that does not
// resolve is accepted, since DialContext checks again at delivery. Errors
// name the problem, and not the whole URL.
func (g Guard) CheckURL(ctx context.Context, r *net.Resolver, raw string) error {
	u, err := parseURL(raw)
	if err != nil {
		return err
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		return g.checkAddr(host, a)
	}
	if g.AllowPrivate {
		return nil
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
		if err := g.checkAddr(host, a); err != nil {
			return err
		}
	}
	return nil
}

// DialContext returns a dial function for an http.Transport that refuses,
// at connect time, the address actually dialed when it is in a refused range
// (unless AllowPrivate). The check runs in net.Dialer.Control, after name
// resolution, for every address tried.
func (g Guard) DialContext(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout: timeout,
		Control: func(network, address string, _ syscall.RawConn) error {
			if g.AllowPrivate {
				return nil
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("refusing to connect to %q: not an IP address and port: %w", address, ErrBlockedAddress)
			}
			return g.checkAddr("", ap.Addr())
		},
	}
	return d.DialContext
}
