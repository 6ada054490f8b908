package hostpattern

import (
	"fmt"
	"net"
	"net/netip"
)

// HostAddrs lists this host's own global unicast addresses, on every
// interface of the current network namespace (private ones included;
// loopback, link-local and multicast addresses are left out: every user
// refuses those by range already). Services bound to 0.0.0.0 or :: listen
// on all of them, so whatever connects on a job's or a producer's behalf
// (the egress proxy, webhook delivery) refuses them, even when they are
// public. Addresses change (DHCP, interfaces coming and going); callers
// that live long list them again.
func HostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list this host's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
