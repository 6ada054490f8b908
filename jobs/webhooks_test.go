package jobs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/jobs/webhook"
)

func TestWebhookConfig(t *testing.T) {
	secret, err := webhook.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "hooks.json")
	os.WriteFile(p, []byte(`{"secrets": {"*": ["`+secret+`"], "reports": ["`+secret+`", "`+secret+`"]},
		"defaults": {"reports": "https://hooks.example/sandq"}, "timeout": "5s", "schedule": ["1s", "1m"], "max_attempts": 3}`), 0o644)
	c, err := LoadWebhookConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 5*time.Second || len(c.Schedule) != 2 || c.Schedule[1] != time.Minute || c.MaxAttempts != 3 || c.Queue != "webhooks" {
		t.Errorf("loaded %+v", c)
	}
	if len(c.SecretsFor("reports", "")) != 2 || len(c.SecretsFor("default", "")) != 1 {
		t.Errorf("secrets for reports %v, default %v", c.SecretsFor("reports", ""), c.SecretsFor("default", ""))
	}
	if c.Concurrency != 16 || c.HostConcurrency != 4 || c.TenantConcurrency != 4 {
		t.Errorf("concurrency %d, per host %d, per tenant %d; want the defaults 16, 4, 4", c.Concurrency, c.HostConcurrency, c.TenantConcurrency)
	}
	tenantA, _ := webhook.NewSecret()
	bad := map[string]func(*WebhookConfig){
		"tenant secret":       func(c *WebhookConfig) { c.TenantSecrets = map[string][]string{"acme": {"whsec_short"}} },
		"tenant empty list":   func(c *WebhookConfig) { c.TenantSecrets = map[string][]string{"acme": {}} },
		"tenant name":         func(c *WebhookConfig) { c.TenantSecrets = map[string][]string{"a/b": {tenantA}} },
		"tenant key is queue": func(c *WebhookConfig) { c.TenantSecrets = map[string][]string{"acme": {secret}} },
		"tenant key shared": func(c *WebhookConfig) {
			c.TenantSecrets = map[string][]string{"acme": {tenantA}, "beta": {strings.TrimRight(tenantA, "=")}}
		},
		"host cap zero":    func(c *WebhookConfig) { c.HostConcurrency = -1 },
		"host cap over":    func(c *WebhookConfig) { c.HostConcurrency = c.Concurrency + 1 },
		"tenant cap zero":  func(c *WebhookConfig) { c.TenantConcurrency = -1 },
		"tenant cap over":  func(c *WebhookConfig) { c.TenantConcurrency = c.Concurrency + 1 },
		"concurrency zero": func(c *WebhookConfig) { c.Concurrency = 0 },
		"secret":           func(c *WebhookConfig) { c.Secrets = map[string][]string{"*": {"not-a-secret"}} },
		"default url":      func(c *WebhookConfig) { c.Defaults = map[string]string{"q": "http://127.0.0.1/x"} },
		"timeout":          func(c *WebhookConfig) { c.Timeout = time.Minute },
		"attempts":         func(c *WebhookConfig) { c.MaxAttempts = -1 },
		"empty list":       func(c *WebhookConfig) { c.Secrets = map[string][]string{"*": {secret}, "q": {}} },
		"default without secret": func(c *WebhookConfig) {
			c.Secrets = map[string][]string{"reports": {secret}}
			c.Defaults = map[string]string{"other": "https://hooks.example/x"}
		},
	}
	for name, mod := range bad {
		b := c
		mod(&b)
		err := b.Validate()
		if err == nil {
			t.Errorf("%s: a bad setting passed", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if want := badSays[name]; want == "" || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: refused with %q, want it to say %q", name, err, want)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), tenantA) {
			t.Errorf("%s: the error %q repeats a secret", name, err)
		}
	}
	// Tenant secrets: loaded from the file, a tenant's jobs signed with its
	// own only (two while one is rotated out), never with the queue's.
	tenantA2, _ := webhook.NewSecret()
	os.WriteFile(p, []byte(`{"secrets": {"*": ["`+secret+`"]}, "tenant_secrets": {"acme": ["`+tenantA+`", "`+tenantA2+`"]},
		"concurrency": 8, "host_concurrency": 2, "tenant_concurrency": 3}`), 0o644)
	c, err = LoadWebhookConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.SecretsFor("default", "acme"); len(got) != 2 || got[0] != tenantA || got[1] != tenantA2 {
		t.Errorf("secrets of tenant acme: %d", len(got))
	}
	if got := c.SecretsFor("default", "beta"); len(got) != 0 {
		t.Errorf("tenant beta, who has no secret, gets %d (the queue's?)", len(got))
	}
	if c.Concurrency != 8 || c.HostConcurrency != 2 || c.TenantConcurrency != 3 {
		t.Errorf("concurrency %d/%d/%d, want 8/2/3 from the file", c.Concurrency, c.HostConcurrency, c.TenantConcurrency)
	}
	if d := (WebhookConfig{Concurrency: 2}).WithDefaults(); d.HostConcurrency != 1 || d.TenantConcurrency != 1 || d.Validate() != nil {
		t.Errorf("concurrency 2: per host %d, per tenant %d, %v", d.HostConcurrency, d.TenantConcurrency, d.Validate())
	}
	os.WriteFile(p, []byte(`{"secret": []}`), 0o644)
	if _, err := LoadWebhookConfig(p); err == nil || !strings.Contains(err.Error(), "secret") {
		t.Errorf("an unknown field: %v", err)
	}
}

// badSays is what each bad setting of TestWebhookConfig must be refused
// with, so that no row passes for another row's reason.
var badSays = map[string]string{
	"tenant secret":          "tenant_secrets of acme: secret 1",
	"tenant empty list":      "tenant_secrets of acme: an empty list",
	"tenant name":            "\"a/b\" is not a valid tenant name",
	"tenant key is queue":    "also a secret of queue",
	"tenant key shared":      "also a secret of tenant acme",
	"host cap zero":          "host_concurrency -1",
	"host cap over":          "host_concurrency 17",
	"tenant cap zero":        "tenant_concurrency -1",
	"tenant cap over":        "tenant_concurrency 17",
	"concurrency zero":       "concurrency must be at least 1",
	"secret":                 "must start with \"whsec_\"",
	"default url":            "loopback address",
	"timeout":                "timeout must be between",
	"attempts":               "max_attempts must be at least 1",
	"empty list":             "secrets of q: an empty list",
	"default without secret": "no secret to sign it with",
}
