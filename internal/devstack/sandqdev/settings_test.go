package sandqdev

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// The dev stack's webhook settings sign the API tenant "dev"'s jobs with a
// secret of its own (a tenant's jobs are never signed with a queue's), kept
// across runs; a settings file from before tenant secrets gets one, and
// keeps everything else.
func TestDevWebhookConfigHasTheDevTenantsSecret(t *testing.T) {
	p := filepath.Join(t.TempDir(), "webhook.json")
	check := func() []string {
		t.Helper()
		got, err := WriteWebhookConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		secrets := strings.Split(got, ",")
		c, err := jobs.LoadWebhookConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WithDefaults().Validate(); err != nil {
			t.Fatal(err)
		}
		if len(secrets) != 2 || c.Secrets["*"][0] != secrets[0] || len(c.TenantSecrets["dev"]) != 1 || c.TenantSecrets["dev"][0] != secrets[1] || !c.AllowPrivate {
			t.Fatalf("returned %d secrets; file %+v", len(secrets), c)
		}
		return secrets
	}
	first := check()
	if again := check(); again[0] != first[0] || again[1] != first[1] {
		t.Error("the secrets changed between runs")
	}
	queueSecret, _ := webhook.NewSecret()
	os.WriteFile(p, []byte(`{"secrets": {"*": ["`+queueSecret+`"]}, "allow_private": true, "max_attempts": 3}`), 0o600)
	if got := check(); got[0] != queueSecret {
		t.Error("the queue secret of an older file was replaced")
	}
	if c, _ := jobs.LoadWebhookConfig(p); c.MaxAttempts != 3 {
		t.Errorf("max_attempts of an older file lost: %d", c.MaxAttempts)
	}
}
