package api

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuthConfigRefusals: every refusal of Validate and LoadAuthConfig
// names what is wrong.
func TestAuthConfigRefusals(t *testing.T) {
	_, good, err := NewToken("acme", "ci")
	if err != nil {
		t.Fatal(err)
	}
	ok := func() *AuthConfig {
		return &AuthConfig{Tenants: map[string]Tenant{"acme": {Queues: []string{"default"}}}, Tokens: []TokenEntry{good}}
	}
	if err := ok().Validate(); err != nil {
		t.Fatalf("a valid config: %v", err)
	}
	for _, c := range []struct {
		name   string
		modify func(*AuthConfig)
		want   string
	}{
		{"bad tenant name", func(c *AuthConfig) { c.Tenants["a/b"] = Tenant{Queues: []string{"default"}} }, `tenant "a/b": not a valid name`},
		{"no queues", func(c *AuthConfig) { c.Tenants["acme"] = Tenant{} }, "tenant acme: no queues"},
		{"bad queue", func(c *AuthConfig) { c.Tenants["acme"] = Tenant{Queues: []string{"no space"}} }, "tenant acme: queue"},
		{"negative burst", func(c *AuthConfig) { c.Tenants["acme"] = Tenant{Queues: []string{"default"}, Burst: -1} }, "burst must not be negative"},
		{"unknown tenant", func(c *AuthConfig) { c.Tokens[0].Tenant = "beta" }, `tenant "beta" is not configured`},
		{"bad hash", func(c *AuthConfig) { c.Tokens[0].SHA256 = "sandq_plaintext" }, "sha256 must be 64 lower-case hex digits"},
		{"token twice", func(c *AuthConfig) { c.Tokens = append(c.Tokens, c.Tokens[0]) }, "the same token is configured twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok()
			c.modify(cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Validate = %v, want %q", err, c.want)
			}
		})
	}
	// Defaults fill what a tenant leaves out.
	cfg := ok()
	cfg.Validate()
	if tn := cfg.Tenants["acme"]; tn.RatePerSecond != DefaultRatePerSecond || tn.Burst != DefaultBurst || tn.MaxPending != DefaultMaxPending {
		t.Errorf("defaults: %+v", tn)
	}
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":  `{"tenants": {}, "tokns": []}`,
		"not JSON":     `tenants: {}`,
		"invalid JSON": `{"tenants": {"acme": {"queues": []}}}`,
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".json")
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := LoadAuthConfig(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: LoadAuthConfig = %v, want an error naming the file", name, err)
		}
	}
	if _, err := LoadAuthConfig(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("a missing file was accepted")
	}
	if _, _, err := NewToken("a b", ""); err == nil {
		t.Error("NewToken accepted a bad tenant name")
	}
}

// TestAuthenticate: bearer tokens, basic-auth passwords only where asked
// for, and nothing without a configuration.
func TestAuthenticate(t *testing.T) {
	tok, entry, _ := NewToken("acme", "")
	cfg := &AuthConfig{Tenants: map[string]Tenant{"acme": {Queues: []string{"*"}}}, Tokens: []TokenEntry{entry}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	req := func(bearer, basic string) *http.Request {
		r, _ := http.NewRequest("GET", "/", nil)
		if bearer != "" {
			r.Header.Set("Authorization", "Bearer "+bearer)
		}
		if basic != "" {
			r.SetBasicAuth("anyone", basic)
		}
		return r
	}
	if p, err := cfg.authenticate(req(tok, ""), false); err != nil || p.tenant != "acme" || !p.mayUse("any-queue") {
		t.Errorf("bearer: %+v %v", p, err)
	}
	if _, err := cfg.authenticate(req("", tok), false); err != errNoToken {
		t.Errorf("basic auth on the API: %v", err)
	}
	if p, err := cfg.authenticate(req("", tok), true); err != nil || p.tenant != "acme" {
		t.Errorf("basic auth on the dashboard: %v", err)
	}
	if _, err := cfg.authenticate(req(tok+"x", ""), false); err != errBadToken {
		t.Errorf("a wrong token: %v", err)
	}
	var none *AuthConfig
	if _, err := none.authenticate(req(tok, ""), false); err != errBadToken {
		t.Errorf("no configuration: %v", err)
	}
}
