package api

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/sandq/sandq/internal/hostpattern"
)

// hostSet is the set of names (the Host header) a server answers to: a
// page on another site whose name an attacker re-points at this server
// (DNS rebinding) sends its own name, and is refused.
type hostSet struct {
	anyPort map[string]bool // names valid on every port
	exact   map[string]bool // name:port
}

// defaultHosts are what a server with no configured names answers to:
// loopback names, on any port.
var defaultHosts = []string{"localhost", "127.0.0.1", "[::1]"}

// parseHosts checks configured names: a host name or an IP address, each
// with an optional port ("sandq.example.com", "sandq.example.com:8443",
// "10.0.0.5:8080", "[::1]:8080"). A name without a port matches every
// port.
func parseHosts(hosts []string) (hostSet, error) {
	hs := hostSet{anyPort: map[string]bool{}, exact: map[string]bool{}}
	if len(hosts) == 0 {
		hosts = defaultHosts
	}
	for _, h := range hosts {
		name, port, ok := splitHost(h)
		if !ok {
			return hostSet{}, fmt.Errorf("allowed host %q: not a host name or IP address with an optional port (sandq.example.com, sandq.example.com:8443, [::1]:8080)", h)
		}
		if port == "" {
			hs.anyPort[name] = true
		} else {
			hs.exact[net.JoinHostPort(name, port)] = true
		}
	}
	return hs, nil
}

// CheckHosts checks names for Config.Hosts.
func CheckHosts(hosts []string) error {
	_, err := parseHosts(hosts)
	return err
}

// splitHost normalizes a Host header or a configured name: lower case, no
// trailing dot, IP addresses in their canonical form, the port as a
// number ("" when there is none).
func splitHost(h string) (name, port string, ok bool) {
	h = strings.ToLower(strings.TrimSpace(h))
	switch {
	case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]"):
		name = h[1 : len(h)-1]
	case strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1:
		var err error
		if name, port, err = net.SplitHostPort(h); err != nil {
			return "", "", false
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "", "", false
		}
		port = strconv.Itoa(n)
	default:
		// A name, or an IPv6 address without brackets or port.
		name = h
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		if ip.Zone() != "" {
			return "", "", false
		}
		return ip.Unmap().String(), port, true
	}
	// Names follow the proxy's rules (hostpattern); other spellings of an
	// IP address ("0x7f.1") are refused.
	name, err := hostpattern.NormalizeHost(name)
	if err != nil {
		return "", "", false
	}
	return name, port, true
}

// allows reports whether a request's Host header is one of the names.
func (hs hostSet) allows(host string) bool {
	name, port, ok := splitHost(host)
	if !ok {
		return false
	}
	return hs.anyPort[name] || port != "" && hs.exact[net.JoinHostPort(name, port)]
}

// DefaultHosts are the names a server listening at addr answers to unless
// more are configured: the address it was told to listen on (listen, as
// given: a name stays a name) and the address it listens on, with the
// port, and localhost, 127.0.0.1 and [::1] on any port (a rebinding page
// sends its own name, never these; a port forward or a container's
// published port may change the port). A server on an unspecified address
// (0.0.0.0, [::]) also answers to each of this host's interface addresses
// with the port.
func DefaultHosts(listen string, addr net.Addr) []string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil
	}
	port := strconv.Itoa(tcp.Port)
	out := slices.Clone(defaultHosts)
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		if _, _, ok := splitHost(h); ok {
			out = append(out, net.JoinHostPort(h, port))
		}
	}
	if !tcp.IP.IsUnspecified() {
		return append(out, net.JoinHostPort(tcp.IP.String(), port))
	}
	addrs, _ := hostpattern.HostAddrs()
	for _, a := range addrs {
		out = append(out, net.JoinHostPort(a.String(), port))
	}
	return out
}

// misdirected refuses a request for a name the server does not answer to.
func misdirected(host string) *Error {
	return apiError(http.StatusMisdirectedRequest, "unknown_host", "",
		fmt.Sprintf("this server does not answer to the host name %q; if it is one of the server's names, add it to its allowed hosts (sandq serve --allowed-hosts, SANDQ_ALLOWED_HOSTS)", host))
}

// proxyHeaders mark a request that came through a proxy.
var proxyHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-Ip"}

// fromThisHost reports whether a request came straight from a client on
// this host: a loopback peer, and no proxy in between. A reverse proxy on
// this host forwards every client's requests from loopback; it is told
// apart by the headers proxies add.
func fromThisHost(r *http.Request) bool {
	for _, h := range proxyHeaders {
		if _, ok := r.Header[h]; ok {
			return false
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
