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
	if len(c.secretsFor("reports")) != 2 || len(c.secretsFor("default")) != 1 {
		t.Errorf("secrets for reports %v, default %v", c.secretsFor("reports"), c.secretsFor("default"))
	}
	bad := map[string]func(*WebhookConfig){
		"secret":      func(c *WebhookConfig) { c.Secrets = map[string][]string{"*": {"not-a-secret"}} },
		"default url": func(c *WebhookConfig) { c.Defaults = map[string]string{"q": "http://127.0.0.1/x"} },
		"timeout":     func(c *WebhookConfig) { c.Timeout = time.Minute },
		"attempts":    func(c *WebhookConfig) { c.MaxAttempts = -1 },
		"empty list":  func(c *WebhookConfig) { c.Secrets = map[string][]string{"*": {secret}, "q": {}} },
		"default without secret": func(c *WebhookConfig) {
			c.Secrets = map[string][]string{"reports": {secret}}
			c.Defaults = map[string]string{"other": "https://hooks.example/x"}
		},
	}
	for name, mod := range bad {
		b := c
		mod(&b)
		if err := b.Validate(); err == nil {
			t.Errorf("%s: a bad setting passed", name)
		}
	}
	os.WriteFile(p, []byte(`{"secret": []}`), 0o644)
	if _, err := LoadWebhookConfig(p); err == nil || !strings.Contains(err.Error(), "secret") {
		t.Errorf("an unknown field: %v", err)
	}
}
