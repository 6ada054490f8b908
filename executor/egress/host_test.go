package egress

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
		{"", "", ErrInvalidHost},
		{".", "", ErrInvalidHost},
		{"example.org..", "", ErrInvalidHost},
		{".example.org", "", ErrInvalidHost},
		{"a..example.org", "", ErrInvalidHost},
		{"-a.example.org", "", ErrInvalidHost},
		{"a-.example.org", "", ErrInvalidHost},
		{"exa mple.org", "", ErrInvalidHost},
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
		// Malformed patterns never match.
		{"*", "example.com", false},
		{"*example.com", "aexample.com", false},
		{"a.*.example.com", "a.b.example.com", false},
		{"*.*.example.com", "a.b.example.com", false},
		{"", "", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.host); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.host, got, tt.want)
		}
	}
}

func TestCompilePolicy(t *testing.T) {
	c, err := compilePolicy(Policy{Hosts: []string{"Example.org.", "*.Example.org", "example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.patterns, ","); got != "example.org,*.example.org" {
		t.Errorf("patterns = %s", got)
	}
	if !c.allowsPort(80) || !c.allowsPort(443) || c.allowsPort(8080) {
		t.Errorf("default ports = %v, want 80 and 443", c.ports)
	}
	if p, ok := c.match("a.example.org"); !ok || p != "*.example.org" {
		t.Errorf("match(a.example.org) = %q, %v", p, ok)
	}

	bad := []struct {
		pol  Policy
		want string
	}{
		{Policy{Hosts: []string{"ok.example", "127.0.0.1"}}, `Policy.Hosts[1] "127.0.0.1"`},
		{Policy{Hosts: []string{"[::1]"}}, "IP address"},
		{Policy{Hosts: []string{"*"}}, "Policy.Hosts[0]"},
		{Policy{Hosts: []string{"*.org"}}, "too broad"},
		{Policy{Hosts: []string{"a.*.example.org"}}, "wildcard"},
		{Policy{Hosts: []string{"*example.org"}}, "wildcard"},
		{Policy{Hosts: []string{""}}, "empty"},
		{Policy{Hosts: []string{"ok.example"}, Ports: []int{443, 0}}, "Policy.Ports[1] 0"},
		{Policy{Hosts: []string{"ok.example"}, Ports: []int{65536}}, "Policy.Ports[0]"},
	}
	for _, tt := range bad {
		_, err := compilePolicy(tt.pol)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("compilePolicy(%+v) = %v, want an error containing %q", tt.pol, err, tt.want)
		}
	}
}
