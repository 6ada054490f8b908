package jobs

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/hostpattern"
	"github.com/sandq/sandq/internal/keys"
)

// builtinGroups are the host groups every deployment starts with: the
// Python package index and its file host, the npm registry, and GitHub with
// its raw-content, codeload and objects hosts. The configuration may
// override any of them.
//
//go:embed netgroups.json
var builtinGroupsJSON []byte

// NetworkNone and NetworkDefault are the two words a job may ask for
// instead of a list of groups and hosts.
const (
	NetworkNone    = "none"
	NetworkDefault = "default"
)

// EgressConfig is the operator's network policy: named host groups, and
// per queue the most a job may have and what "default" means.
type EgressConfig struct {
	// Groups maps a group name to host patterns: exact hosts or "*."
	// suffix globs (the language of internal/hostpattern). Built-in
	// groups are present unless overridden.
	Groups map[string][]string `json:"groups,omitempty"`
	// Queues: a queue not listed allows no network at all.
	Queues map[string]QueueEgress `json:"queues,omitempty"`
	// Ports a job may reach through the proxy. Default 80 and 443.
	Ports []int `json:"ports,omitempty"`
	// Pool of addresses for job networks, split into /30s. Default
	// 10.200.0.0/16.
	Pool string `json:"pool,omitempty"`
	// Per-job traffic limits. Defaults: 32 connections, 1 GiB, 60s idle,
	// 10m per connection.
	MaxConns     int           `json:"max_conns,omitempty"`
	MaxBytes     int64         `json:"max_bytes,omitempty"`
	IdleTimeout  time.Duration `json:"-"`
	TotalTimeout time.Duration `json:"-"`
}

// QueueEgress is one queue's policy: group names or host patterns.
type QueueEgress struct {
	// Max is the most a job on the queue may ask for.
	Max []string `json:"max"`
	// Default is what a job asking for "default" gets; within Max.
	Default []string `json:"default,omitempty"`
	// Ports overrides EgressConfig.Ports for this queue.
	Ports []int `json:"ports,omitempty"`
}

// LoadEgressConfig reads a JSON policy file.
func LoadEgressConfig(path string) (EgressConfig, error) {
	var f struct {
		EgressConfig
		IdleTimeout  string `json:"idle_timeout"`
		TotalTimeout string `json:"total_timeout"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return EgressConfig{}, fmt.Errorf("egress config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return EgressConfig{}, fmt.Errorf("egress config %s: %w", path, err)
	}
	c := f.EgressConfig
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{{"idle_timeout", f.IdleTimeout, &c.IdleTimeout}, {"total_timeout", f.TotalTimeout, &c.TotalTimeout}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 {
			return EgressConfig{}, fmt.Errorf("egress config %s: %s %q: want a positive duration like 60s", path, d.name, d.s)
		}
		*d.dst = v
	}
	return c, nil
}

// WithDefaults merges the built-in groups under the configured ones and
// fills unset fields.
func (c EgressConfig) WithDefaults() EgressConfig {
	groups := map[string][]string{}
	var builtin map[string][]string
	if err := json.Unmarshal(builtinGroupsJSON, &builtin); err != nil {
		panic(fmt.Sprintf("built-in network groups: %v", err))
	}
	for k, v := range builtin {
		groups[k] = v
	}
	for k, v := range c.Groups {
		groups[k] = v
	}
	c.Groups = groups
	if len(c.Ports) == 0 {
		c.Ports = []int{80, 443}
	}
	if c.Pool == "" {
		c.Pool = "10.200.0.0/16"
	}
	if c.MaxConns == 0 {
		c.MaxConns = 32
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 1 << 30
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = time.Minute
	}
	if c.TotalTimeout == 0 {
		c.TotalTimeout = 10 * time.Minute
	}
	return c
}

// Validate checks group patterns, queue policies and ports.
func (c EgressConfig) Validate() error {
	for name := range c.Groups {
		if name == NetworkNone || name == NetworkDefault || strings.ContainsAny(name, ".*,") || name == "" {
			return fmt.Errorf("egress group %q: a group name is a plain word, not none or default", name)
		}
		// A group's patterns are checked as for a job that asks for it;
		// the error reads "egress group NAME: host pattern ...".
		if _, err := c.expand([]string{name}); err != nil {
			return fmt.Errorf("egress %w", err)
		}
	}
	for q, p := range c.Queues {
		max, err := c.expand(p.Max)
		if err != nil {
			return fmt.Errorf("egress queue %s max: %w", q, err)
		}
		def, err := c.expand(p.Default)
		if err != nil {
			return fmt.Errorf("egress queue %s default: %w", q, err)
		}
		if err := within(def, max); err != nil {
			return fmt.Errorf("egress queue %s: its default is not within its max: %w", q, err)
		}
		for _, port := range p.Ports {
			if port < 1 || port > 65535 {
				return fmt.Errorf("egress queue %s: ports: %d is not between 1 and 65535", q, port)
			}
		}
	}
	for _, port := range c.Ports {
		if port < 1 || port > 65535 {
			return fmt.Errorf("egress ports: %d is not between 1 and 65535", port)
		}
	}
	switch {
	case c.MaxConns < 0:
		return fmt.Errorf("egress max_conns: %d must not be negative", c.MaxConns)
	case c.MaxBytes < 0:
		return fmt.Errorf("egress max_bytes: %d must not be negative", c.MaxBytes)
	case c.IdleTimeout < 0 || c.TotalTimeout < 0:
		return fmt.Errorf("egress idle_timeout and total_timeout must not be negative")
	}
	if _, err := netip.ParsePrefix(c.Pool); err != nil {
		return fmt.Errorf("egress pool %q: %w", c.Pool, err)
	}
	return nil
}

// publishedEgress is one queue's entry in keys.Egress: the policy its
// workers enforce.
type publishedEgress struct {
	Groups map[string][]string `json:"groups"`
	Queue  QueueEgress         `json:"queue"`
	Ports  []int               `json:"ports"`
}

// Publish writes the policy of each served queue that has one, for
// producers to check jobs against. It warns when it replaces a different
// policy: the workers of a queue should share one.
func (c EgressConfig) Publish(ctx context.Context, rdb redis.UniversalClient, queues map[string]int, logger *slog.Logger) error {
	for q := range queues {
		p, ok := c.Queues[q]
		if !ok {
			continue
		}
		b, err := json.Marshal(publishedEgress{Groups: c.Groups, Queue: p, Ports: c.Ports})
		if err != nil {
			return err
		}
		old, err := rdb.HGet(ctx, keys.Egress, q).Bytes()
		if err == nil && string(old) != string(b) {
			logger.Warn("replacing a different network policy published for this queue; give its workers one policy", "queue", q)
		}
		if err := rdb.HSet(ctx, keys.Egress, q, b).Err(); err != nil {
			return err
		}
	}
	return nil
}

// NetworkPolicy is what one job may reach, resolved at enqueue.
type NetworkPolicy struct {
	// Asked is what the job asked for (groups and hosts).
	Asked []string `json:"asked"`
	// Hosts are the host patterns it may reach.
	Hosts []string `json:"hosts"`
	Ports []int    `json:"ports"`
}

// ResolveNetwork turns what a job asks for into its policy on queue q: nil
// for no network. Asking for more than the queue allows is refused, naming
// the group or host.
func (c EgressConfig) ResolveNetwork(q string, asked []string) (*NetworkPolicy, error) {
	if len(asked) == 0 || (len(asked) == 1 && asked[0] == NetworkNone) {
		return nil, nil
	}
	qp, ok := c.Queues[q]
	if !ok || len(qp.Max) == 0 {
		return nil, &FieldError{Field: "network", Msg: fmt.Sprintf("queue %q allows no network", q)}
	}
	req := asked
	if len(asked) == 1 && asked[0] == NetworkDefault {
		if len(qp.Default) == 0 {
			return nil, &FieldError{Field: "network", Msg: fmt.Sprintf("queue %q has no default network", q)}
		}
		req = qp.Default
	}
	for _, a := range req {
		if a == NetworkNone || a == NetworkDefault {
			return nil, &FieldError{Field: "network", Msg: fmt.Sprintf("%q cannot be combined with other groups or hosts", a)}
		}
	}
	max, err := c.expand(qp.Max)
	if err != nil {
		return nil, err
	}
	hosts, err := c.expand(req)
	if err != nil {
		return nil, &FieldError{Field: "network", Msg: err.Error()}
	}
	if err := within(hosts, max); err != nil {
		return nil, &FieldError{Field: "network", Msg: fmt.Sprintf("%v on queue %q", err, q)}
	}
	ports := c.Ports
	if len(qp.Ports) > 0 {
		ports = qp.Ports
	}
	return &NetworkPolicy{Asked: asked, Hosts: sortedKeys(hosts), Ports: append([]int(nil), ports...)}, nil
}

// expand maps group names and host patterns to normalized host patterns,
// remembering which entry each came from.
func (c EgressConfig) expand(entries []string) (map[string]string, error) {
	out := map[string]string{}
	for _, e := range entries {
		hosts, group := c.Groups[e]
		if !group {
			if !strings.Contains(e, ".") {
				return nil, fmt.Errorf("unknown group %q", e)
			}
			hosts = []string{e}
		}
		for _, h := range hosts {
			p, err := hostpattern.Normalize(h)
			switch {
			case err != nil && group:
				return nil, fmt.Errorf("group %s: host pattern %q: %w", e, h, err)
			case err != nil:
				return nil, fmt.Errorf("host pattern %q: %w", h, err)
			case group:
				out[p] = "group " + e
			default:
				out[p] = "host " + p
			}
		}
	}
	return out, nil
}

// within refuses any pattern of asked not covered by one of max, naming the
// group or host it came from.
func within(asked, max map[string]string) error {
	for _, p := range sortedKeys(asked) {
		covered := false
		for m := range max {
			if hostpattern.Covers(m, p) {
				covered = true
				break
			}
		}
		if !covered {
			if from := asked[p]; strings.HasPrefix(from, "group ") {
				return fmt.Errorf("%s (host %s) is not allowed", from, p)
			}
			return fmt.Errorf("host %s is not allowed", p)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
