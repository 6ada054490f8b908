package egress

import (
	"fmt"
	"slices"

	"github.com/sandq/sandq/internal/hostpattern"
)

// defaultPorts are the ports a Policy without Ports allows.
var defaultPorts = []int{80, 443}

// policy is a validated Policy.
type policy struct {
	patterns []string // normalized (hostpattern.Normalize), in the job's order
	ports    []int
}

// compilePolicy validates pol and normalizes its patterns. Errors name the
// field.
func compilePolicy(pol Policy) (*policy, error) {
	c := &policy{}
	for i, raw := range pol.Hosts {
		p, err := hostpattern.Normalize(raw)
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

// match returns the pattern that allows host, if any.
func (c *policy) match(host string) (string, bool) {
	return hostpattern.MatchAny(c.patterns, host)
}

func (c *policy) allowsPort(port int) bool { return slices.Contains(c.ports, port) }
