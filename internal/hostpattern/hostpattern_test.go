package hostpattern

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"example.org", "example.org", nil},
		{"Example.ORG", "example.org", nil},
		{"example.org.", "example.org", nil},
		{"EXAMPLE.org.", "example.org", nil},
		{"a-b_c.example.org", "a-b_c.example.org", nil},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", nil},
		{"localhost", "localhost", nil},
		{"1password.example", "1password.example", nil},
		{"example.123abc", "example.123abc", nil},
		{"e.", "e", nil},
		{strings.Repeat("a", 63) + ".example", strings.Repeat("a", 63) + ".example", nil},
		{"", "", ErrInvalidHost},
		{".", "", ErrInvalidHost},
		{"example.org..", "", ErrInvalidHost},
		{".example.org", "", ErrInvalidHost},
		{"a..example.org", "", ErrInvalidHost},
		{"-a.example.org", "", ErrInvalidHost},
		{"a-.example.org", "", ErrInvalidHost},
		{"xn--", "", ErrInvalidHost},
		{"exa mple.org", "", ErrInvalidHost},
		{" example.org", "", ErrInvalidHost},
		{"example.org ", "", ErrInvalidHost},
		{"*.example.org", "", ErrInvalidHost},
		{"example.org/path", "", ErrInvalidHost},
		{"bücher.example", "", ErrInvalidHost},
		{"\u212Aexample.org", "", ErrInvalidHost}, // Kelvin sign, lower-cases to "k"
		{strings.Repeat("a", 64) + ".example", "", ErrInvalidHost},
		{strings.Repeat("abcdefghi.", 26) + "example", "", ErrInvalidHost},
		// IP literals in every form.
		{"127.0.0.1", "", ErrIPLiteral},
		{"127.0.0.1.", "", ErrIPLiteral},
		{"2130706433", "", ErrIPLiteral},
		{"0177.0.0.1", "", ErrIPLiteral},
		{"0x7f.1", "", ErrIPLiteral},
		{"0X7F.0.0.1", "", ErrIPLiteral},
		{"127.1", "", ErrIPLiteral},
		{"1.2.3.0x4", "", ErrIPLiteral},
		{"example.0x1f", "", ErrIPLiteral},
		{"example.80", "", ErrIPLiteral},
		{"::1", "", ErrIPLiteral},
		{"[::1]", "", ErrIPLiteral},
		{"::ffff:127.0.0.1", "", ErrIPLiteral},
		{"[::ffff:127.0.0.1]", "", ErrIPLiteral},
		{"fe80::1%eth0", "", ErrIPLiteral},
		{"169.254.169.254", "", ErrIPLiteral},
		{"%2a.example.org", "", ErrIPLiteral}, // '%' is IPv6 zone syntax
	}
	for _, tt := range tests {
		got, err := NormalizeHost(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("NormalizeHost(%q) = %q, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestIsIPLiteral(t *testing.T) {
	for _, h := range []string{"127.0.0.1", "127.0.0.1.", "0X7F.1", "2130706433", "example.0XFF", "[::1]", "::1", "fe80::1%eth0"} {
		if !IsIPLiteral(h) {
			t.Errorf("IsIPLiteral(%q) = false, want true", h)
		}
	}
	for _, h := range []string{"example.org", "example.org.", "1password.example", "example.123abc", "example.0xg", "", "."} {
		if IsIPLiteral(h) {
			t.Errorf("IsIPLiteral(%q) = true, want false", h)
		}
	}
}

// TestNormalize is the union of the edge cases of the two pattern checks
// this package replaces (executor/egress and jobs): both accepted and
// refused the same patterns, and both kept the messages below.
func TestNormalize(t *testing.T) {
	ok := []struct{ in, want string }{
		{"example.org", "example.org"},
		{"Example.ORG.", "example.org"},
		{"example.org.", "example.org"},
		{"e.", "e"},
		{"localhost", "localhost"},
		{"a_b.example", "a_b.example"},
		{"*.example.org", "*.example.org"},
		{"*.Example.Org.", "*.example.org"},
		{"*.xn--bcher-kva.example", "*.xn--bcher-kva.example"},
		{"*.1password.example", "*.1password.example"},
		{"*." + strings.Repeat("a", 63) + ".example", "*." + strings.Repeat("a", 63) + ".example"},
		{"*." + strings.Repeat("abcdefghi.", 24) + "example", "*." + strings.Repeat("abcdefghi.", 24) + "example"},
	}
	for _, tt := range ok {
		if got, err := Normalize(tt.in); err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}

	refused := []struct {
		in   string
		kind error
		msg  string
	}{
		// A wildcard anywhere but a leading "*.".
		{"*", ErrInvalidPattern, "wildcard"},
		{"*.*", ErrInvalidPattern, "wildcard"},
		{"*.*.", ErrInvalidPattern, "wildcard"},
		{"**.example.org", ErrInvalidPattern, "wildcard"},
		{"*.*.example.org", ErrInvalidPattern, "wildcard"},
		{"*example.org", ErrInvalidPattern, "wildcard"},
		{"a.*.example.org", ErrInvalidPattern, "wildcard"},
		{"example.*", ErrInvalidPattern, "wildcard"},
		{"* .example.org", ErrInvalidPattern, "wildcard"},
		// Globs of one label: the egress copy said "too broad", the jobs
		// copy "two labels"; the message keeps both.
		{"*.org", ErrInvalidPattern, "too broad"},
		{"*.org.", ErrInvalidPattern, "two labels"},
		{"*.com", ErrInvalidPattern, "two labels"},
		{"*.localhost", ErrInvalidPattern, "too broad"},
		{"*.e", ErrInvalidPattern, "too broad"},
		{"*.e.", ErrInvalidPattern, "too broad"},
		// IP literals, as a host or below a glob.
		{"127.0.0.1", ErrIPLiteral, "IP address"},
		{"10.0.0.1", ErrIPLiteral, "IP address"},
		{"*.127.0.0.1", ErrIPLiteral, "IP address"},
		{"*.0.1", ErrIPLiteral, "IP address"},
		{"*.0.0.1", ErrIPLiteral, "IP address"},
		{"*.1", ErrIPLiteral, "IP address"},
		{"[::1]", ErrIPLiteral, "IP address"},
		{"::1", ErrIPLiteral, "IP address"},
		{"*.[::1]", ErrIPLiteral, "IP address"},
		{"*.example.80", ErrIPLiteral, "IP address"},
		{"*.example.0x1f", ErrIPLiteral, "IP address"},
		{"%2a.example.org", ErrIPLiteral, "IP address"},
		// Names that are not valid host names.
		{"", ErrInvalidHost, "empty"},
		{".", ErrInvalidHost, "empty"},
		{"*.", ErrInvalidHost, "empty"},
		{"example.org..", ErrInvalidHost, "empty label"},
		{"*..example.org", ErrInvalidHost, "empty label"},
		{"*.a..example.org", ErrInvalidHost, "empty label"},
		{"-a.example", ErrInvalidHost, "'-'"},
		{"*.-a.example", ErrInvalidHost, "'-'"},
		{"*.a-.example", ErrInvalidHost, "'-'"},
		{"*.xn--", ErrInvalidHost, "'-'"},
		{"bücher.example", ErrInvalidHost, "punycode"},
		{"*.bücher.example", ErrInvalidHost, "punycode"},
		{"\u212Aexample.org", ErrInvalidHost, "punycode"},
		{" example.org", ErrInvalidHost, "' '"},
		{"example.org ", ErrInvalidHost, "' '"},
		{"*.example.org/", ErrInvalidHost, "'/'"},
		{strings.Repeat("a", 64) + ".example", ErrInvalidHost, "63"},
		{strings.Repeat("abcdefghi.", 25) + "example", ErrInvalidHost, "253"},
	}
	for _, tt := range refused {
		got, err := Normalize(tt.in)
		if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("Normalize(%q) = %q, %v; want %v containing %q", tt.in, got, err, tt.kind, tt.msg)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, host string
		want          bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com", true},
		{"example.com", "example.com.", true},
		{"Example.COM.", "example.com", true},
		{"example.com", "a.example.com", false},
		{"example.com", "example.co", false},
		{"example.com", "example.com.evil.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "A.Example.Com.", true},
		{"*.EXAMPLE.com.", "a.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "example.com.", false},
		{"*.example.com", "evil-example.com", false},
		{"*.example.com", "aexample.com", false},
		{"*.example.com", "example.com.evil.com", false},
		{"*.example.com", "a.example.com.evil.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "a..example.com", false},
		{"*.example.com", "", false},
		// IP literals never match.
		{"*.0.1", "127.0.0.1", false},
		{"*.0.0.1", "127.0.0.1", false},
		{"*.1", "0x7f.1", false},
		{"127.0.0.1", "127.0.0.1", false},
		{"2130706433", "2130706433", false},
		{"::1", "::1", false},
		{"*.example.com", "a.example.com.80", false},
		// Malformed patterns never match.
		{"*", "example.com", false},
		{"*example.com", "aexample.com", false},
		{"a.*.example.com", "a.b.example.com", false},
		{"*.*.example.com", "a.b.example.com", false},
		{"", "", false},
		// Nor do globs Normalize refuses as too broad.
		{"*.com", "example.com", false},
		{"*.localhost", "a.localhost", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.host); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.host, got, tt.want)
		}
	}
}

func TestMatchAnyReturnsTheFirstMatchingPattern(t *testing.T) {
	patterns := []string{"example.org", "*.example.org", "a.example.org", "*.org", "*.a.example.org"}
	tests := []struct {
		host, want string
		ok         bool
	}{
		{"example.org", "example.org", true},
		{"A.Example.Org.", "*.example.org", true}, // before "a.example.org"
		{"b.a.example.org", "*.example.org", true},
		{"other.org", "", false}, // "*.org" is refused, so it matches nothing
		{"127.0.0.1", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got, ok := MatchAny(patterns, tt.host); got != tt.want || ok != tt.ok {
			t.Errorf("MatchAny(%q) = %q, %v; want %q, %v", tt.host, got, ok, tt.want, tt.ok)
		}
	}
	if got, ok := MatchAny(nil, "example.org"); ok {
		t.Errorf("MatchAny(nil) = %q, true", got)
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		outer, inner string
		want         bool
	}{
		{"a.corp.example", "a.corp.example", true},
		{"*.corp.example", "*.corp.example", true},
		{"*.corp.example", "a.corp.example", true},
		{"*.corp.example", "a.b.corp.example", true},
		{"*.corp.example", "*.b.corp.example", true},
		{"*.Corp.Example.", "A.corp.example", true},
		{"*.corp.example", "corp.example", false},
		{"*.corp.example", "*.other.example", false},
		{"*.corp.example", "evil-corp.example", false},
		{"*.corp.example", "*.evil-corp.example", false},
		{"*.corp.example", "corp.example.evil.test", false},
		{"*.corp.example", "*.example", false},
		{"*.b.corp.example", "*.corp.example", false},
		{"*.b.corp.example", "a.corp.example", false},
		{"a.corp.example", "*.corp.example", false},
		{"a.corp.example", "b.a.corp.example", false},
		{"docs.corp.example", "corp.example", false},
		// A pattern Normalize refuses covers nothing and is covered by
		// nothing.
		{"*.example", "a.example", false},
		{"*.corp.example", "10.0.0.1", false},
		{"*.0.1", "*.0.0.1", false},
		{"*", "a.corp.example", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := Covers(tt.outer, tt.inner); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.outer, tt.inner, got, tt.want)
		}
	}
}

// TestCoversAgreesWithMatch checks Covers against its meaning: outer covers
// inner exactly when every host inner matches, outer matches too.
func TestCoversAgreesWithMatch(t *testing.T) {
	patterns := []string{
		"example.org", "a.example.org", "b.a.example.org", "xample.org", "aexample.org",
		"*.example.org", "*.a.example.org", "*.b.a.example.org", "*.xample.org", "*.org.example",
	}
	// Every host a pattern matches is one of these or, below a glob, like
	// "z" + the glob's suffix.
	hosts := []string{"example.org", "a.example.org", "b.a.example.org", "c.b.a.example.org", "xample.org", "aexample.org", "org.example", "a.org.example"}
	for _, p := range patterns {
		if suffix, ok := strings.CutPrefix(p, "*"); ok {
			hosts = append(hosts, "z"+suffix)
		}
	}
	for _, outer := range patterns {
		for _, inner := range patterns {
			want := true
			for _, h := range hosts {
				if Match(inner, h) && !Match(outer, h) {
					want = false
				}
			}
			if got := Covers(outer, inner); got != want {
				t.Errorf("Covers(%q, %q) = %v, but by Match it is %v", outer, inner, got, want)
			}
		}
	}
}

func TestHostAddrsListsOnlyGlobalUnicast(t *testing.T) {
	addrs, err := HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if !a.IsGlobalUnicast() || a.Is4In6() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() {
			t.Errorf("HostAddrs listed %s", a)
		}
	}
}
