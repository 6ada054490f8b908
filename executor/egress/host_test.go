package egress

import (
	"errors"
	"strings"
	"testing"

	"github.com/sandq/sandq/internal/hostpattern"
)

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
	// Refusals keep the pattern language's errors, for errors.Is.
	for raw, want := range map[string]error{
		"0x7f.1":          hostpattern.ErrIPLiteral,
		"a..example.org":  hostpattern.ErrInvalidHost,
		"*.*.example.org": hostpattern.ErrInvalidPattern,
	} {
		if _, err := compilePolicy(Policy{Hosts: []string{raw}}); !errors.Is(err, want) {
			t.Errorf("compilePolicy(%q) = %v, want %v", raw, err, want)
		}
	}
}
