// Package hostpattern is sandq's one implementation of host names and host
// patterns: the language of the egress allowlist (executor/egress), of the
// operator's network policy and what a job may ask for (jobs), and the
// host-name rules of webhook URLs (jobs/webhook) and of the API's allowed
// hosts (api).
//
// A host name is compared in one form (NormalizeHost): lower case, one
// trailing dot stripped, each label 1 to 63 characters of a-z, 0-9, '-' and
// '_' that neither starts nor ends with '-', 253 characters at most.
// Non-ASCII names are refused: give the punycode form ("xn--bcher-kva.example",
// not "bücher.example"). A host that some resolver or URL parser would take
// as an IP address is refused with ErrIPLiteral, in every spelling:
// "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "example.80",
// "::1", "[::1]", "fe80::1%eth0".
//
// A pattern (Normalize) is either an exact host or "*." followed by a host of
// at least two labels:
//
//	example.org        matches example.org (and Example.ORG.), nothing else
//	*.example.org      matches a.example.org and a.b.example.org, not
//	                   example.org, evil-example.org or example.org.evil.test
//	*.org              refused: too broad
//	a.*.example.org    refused: a wildcard only as the leading "*."
//	*.0.1, 10.0.0.1    refused: IP literals
//
// One pattern covers another (Covers) when it allows every host the other
// does: "*.corp.example" covers "a.corp.example" and "*.b.corp.example", not
// "corp.example". A pattern Normalize refuses matches and covers nothing.
//
// HostAddrs lists this host's own addresses, which everything that connects
// on a job's or a producer's behalf refuses, whatever a name says.
package hostpattern

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

var (
	// ErrInvalidHost marks a host that is not a valid DNS name.
	ErrInvalidHost = errors.New("invalid host name")
	// ErrIPLiteral marks a host written as an IP address, in any of the
	// forms resolvers and URL parsers accept (dotted, decimal, octal, hex,
	// IPv6, IPv4-mapped IPv6). sandq reaches names only.
	ErrIPLiteral = errors.New("host is an IP address")
	// ErrInvalidPattern marks a pattern with a wildcard other than one
	// leading "*.", or a glob that names fewer than two labels.
	ErrInvalidPattern = errors.New("invalid host pattern")
)

// NormalizeHost returns host in the form sandq compares: lower case, with
// one trailing dot stripped. It refuses empty and invalid names, non-ASCII
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
	if IsIPLiteral(h) {
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

// IsIPLiteral reports whether host would be taken as an IP address by some
// resolver or URL parser: anything with IPv6 syntax (':', brackets, a '%'
// zone), and, as the WHATWG URL standard has it, any name whose last label
// is a number in decimal, octal or hex ("127.0.0.1", "2130706433",
// "0177.0.0.1", "0x7f.1"). No top-level domain is numeric, so no real name
// is lost. Case and one trailing dot do not matter.
func IsIPLiteral(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
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

// Normalize checks a pattern, an exact host or "*." and a host of at least
// two labels, and returns it in the form Match and Covers compare
// ("*.Example.ORG." becomes "*.example.org"). Its errors wrap
// ErrInvalidPattern, ErrInvalidHost or ErrIPLiteral and do not repeat the
// pattern: callers name it, with the field it came from.
func Normalize(pattern string) (string, error) {
	suffix, glob := strings.CutPrefix(pattern, "*.")
	if strings.Contains(suffix, "*") {
		return "", fmt.Errorf(`%w: a wildcard is allowed only as a leading "*."`, ErrInvalidPattern)
	}
	n, err := NormalizeHost(suffix)
	if err != nil {
		return "", err
	}
	if !glob {
		return n, nil
	}
	if !strings.Contains(n, ".") {
		return "", fmt.Errorf(`%w: too broad: a glob must keep at least two labels after "*."`, ErrInvalidPattern)
	}
	return "*." + n, nil
}

// Match reports whether host matches pattern (see the package comment).
// Both are normalized first; a pattern Normalize refuses, or a host
// NormalizeHost refuses (an IP literal), never matches.
func Match(pattern, host string) bool {
	_, ok := MatchAny([]string{pattern}, host)
	return ok
}

// MatchAny returns the first of patterns that host matches, as given.
func MatchAny(patterns []string, host string) (string, bool) {
	h, err := NormalizeHost(host)
	if err != nil {
		return "", false
	}
	for _, raw := range patterns {
		if p, err := Normalize(raw); err == nil && covers(p, h) {
			return raw, true
		}
	}
	return "", false
}

// Covers reports whether pattern outer allows every host pattern inner
// allows: they are equal, or outer is a glob and inner a host or a glob
// below it. Both are normalized first; a pattern Normalize refuses covers
// nothing and is covered by nothing.
func Covers(outer, inner string) bool {
	o, err := Normalize(outer)
	if err != nil {
		return false
	}
	i, err := Normalize(inner)
	return err == nil && covers(o, i)
}

// covers is Covers on normalized patterns, and matching when inner is a
// host: "*.corp.example" covers what ends in ".corp.example", hosts
// ("a.corp.example") and globs ("*.b.corp.example") below it.
func covers(outer, inner string) bool {
	suffix, glob := strings.CutPrefix(outer, "*")
	return outer == inner || glob && strings.HasSuffix(inner, suffix)
}
