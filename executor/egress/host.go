package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Errors of NormalizeHost, for errors.Is.
var (
	// ErrInvalidHost marks a host that is not a valid DNS name.
	ErrInvalidHost = errors.New("invalid host name")
	// ErrIPLiteral marks a host written as an IP address, in any of the
	// forms resolvers and URL parsers accept (dotted, decimal, octal, hex,
	// IPv6, IPv4-mapped IPv6). The proxy reaches names only.
	ErrIPLiteral = errors.New("host is an IP address")
)

// NormalizeHost returns host in the form the proxy compares: lower case,
// with one trailing dot stripped. It refuses empty and invalid names, non-ASCII
// names (give the punycode "xn--" form) and IP literals (ErrIPLiteral).
func NormalizeHost(host string) (string, error) {
	h := strings.TrimSuffix(host, ".")
	if h == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidHost)
	}
	// Refuse non-ASCII before lower-casing: strings.ToLower maps some
	// non-ASCII runes to ASCII ones (the Kelvin sign becomes "k").
	for i := 0; i < len(h); i++ {
		if h[i] >= 0x80 {
			return "", fmt.Errorf("%w: %q is not ASCII; use its punycode (xn--) form", ErrInvalidHost, host)
		}
	}
	h = strings.ToLower(h)
	if looksLikeIP(h) {
		return "", fmt.Errorf("%w: %q", ErrIPLiteral, host)
	}
	if len(h) > 253 {
		return "", fmt.Errorf("%w: %q is longer than 253 characters", ErrInvalidHost, host)
	}
	for label := range strings.SplitSeq(h, ".") {
		switch {
		case label == "":
			return "", fmt.Errorf("%w: %q has an empty label", ErrInvalidHost, host)
		case len(label) > 63:
			return "", fmt.Errorf("%w: %q has a label longer than 63 characters", ErrInvalidHost, host)
		case label[0] == '-' || label[len(label)-1] == '-':
			return "", fmt.Errorf("%w: %q has a label that starts or ends with '-'", ErrInvalidHost, host)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%w: %q contains %q", ErrInvalidHost, host, c)
			}
		}
	}
	return h, nil
}

// looksLikeIP reports whether h (lower case) would be taken as an IP address
// by some resolver or URL parser: anything with IPv6 syntax, and, as the WHATWG
// URL standard has it, any name whose last label is a number in decimal,
// octal or hex ("127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1"). No
// top-level domain is numeric, so no real name is lost.
func looksLikeIP(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if strings.ContainsAny(h, ":[]%") {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(last, "0x"); ok {
		return strings.Trim(rest, "0123456789abcdef") == ""
	}
	return strings.Trim(last, "0123456789") == ""
}

// Match reports whether host matches pattern. A pattern is an exact name
// ("example.com") or a suffix glob ("*.example.com", which matches
// "a.example.com" and "a.b.example.com" but not "example.com",
// "evil-example.com" or "example.com.evil.com"). Both are normalized as by
// NormalizeHost first; an IP literal, or anything else NormalizeHost refuses,
// never matches.
func Match(pattern, host string) bool {
	h, err := NormalizeHost(host)
	if err != nil {
		return false
	}
	if suffix, ok := strings.CutPrefix(pattern, "*."); ok {
		s, err := NormalizeHost(suffix)
		return err == nil && strings.HasSuffix(h, "."+s)
	}
	p, err := NormalizeHost(pattern)
	return err == nil && p == h
}

// defaultPorts are the ports a Policy without Ports allows.
var defaultPorts = []int{80, 443}

// policy is a validated Policy.
type policy struct {
	patterns []string // normalized, in the job's order
	ports    []int
}

// compilePolicy validates pol and normalizes its patterns. Errors name the
// field.
func compilePolicy(pol Policy) (*policy, error) {
	c := &policy{}
	for i, raw := range pol.Hosts {
		p, err := normalizePattern(raw)
		if err != nil {
			return nil, fmt.Errorf("egress: Policy.Hosts[%d] %q: %w", i, raw, err)
		}
		if !slices.Contains(c.patterns, p) {
			c.patterns = append(c.patterns, p)
		}
	}
	c.ports = slices.Clone(pol.Ports)
	if len(c.ports) == 0 {
		c.ports = slices.Clone(defaultPorts)
	}
	for i, port := range c.ports {
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("egress: Policy.Ports[%d] %d: must be between 1 and 65535", i, port)
		}
	}
	return c, nil
}

// normalizePattern validates one allowlist entry.
func normalizePattern(raw string) (string, error) {
	suffix, glob := strings.CutPrefix(raw, "*.")
	if strings.Contains(suffix, "*") {
		return "", errors.New(`a wildcard is allowed only as a leading "*."`)
	}
	n, err := NormalizeHost(suffix)
	if err != nil {
		return "", err
	}
	if !glob {
		return n, nil
	}
	if !strings.Contains(n, ".") {
		return "", errors.New(`glob is too broad: name at least two labels after "*."`)
	}
	return "*." + n, nil
}

// match returns the pattern that allows host (normalized), if any.
func (c *policy) match(host string) (string, bool) {
	for _, p := range c.patterns {
		if Match(p, host) {
			return p, true
		}
	}
	return "", false
}

func (c *policy) allowsPort(port int) bool { return slices.Contains(c.ports, port) }
