package sandqdev

import (
	"encoding/json"
	"os"
	"strings"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs/webhook"
)

// EgressPolicy lets jobs on the default queue ask for the built-in
// groups; "default" means the Python and npm registries.
const EgressPolicy = `{
  "queues": {
    "default": {"max": ["pypi", "npm", "github"], "default": ["pypi", "npm"]}
  }
}
`

// WriteWebhookConfig writes (once) the dev stack's webhook settings: a
// signing secret for every queue (jobs from the CLI), one for the API's
// tenant "dev" (a tenant's jobs are signed with its own secret only), both
// kept across runs, and private URLs allowed so a receiver on this machine
// works. It returns the two secrets comma-separated, as
// examples/webhook_receiver takes them.
func WriteWebhookConfig(path string) (string, error) {
	var c struct {
		Secrets       map[string][]string `json:"secrets"`
		TenantSecrets map[string][]string `json:"tenant_secrets"`
	}
	file := map[string]any{}
	b, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(b, &c) == nil && json.Unmarshal(b, &file) == nil && len(c.Secrets["*"]) > 0 {
		if len(c.TenantSecrets["dev"]) > 0 {
			return c.Secrets["*"][0] + "," + c.TenantSecrets["dev"][0], nil
		}
		// A file from before tenant secrets: "dev" gets one, the rest stays.
	} else {
		secret, err := webhook.NewSecret()
		if err != nil {
			return "", err
		}
		c.Secrets = map[string][]string{"*": {secret}}
		file = map[string]any{"secrets": c.Secrets, "allow_private": true}
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return "", err
	}
	if c.TenantSecrets == nil {
		c.TenantSecrets = map[string][]string{}
	}
	c.TenantSecrets["dev"] = []string{secret}
	file["tenant_secrets"] = c.TenantSecrets
	b, _ = json.MarshalIndent(file, "", "  ")
	return c.Secrets["*"][0] + "," + secret, os.WriteFile(path, append(b, '\n'), 0o600)
}

// WriteAuthConfig writes (once) the dev stack's API auth: one tenant "dev"
// that may use every queue and open the dashboard, and its token, kept in
// tokenPath across runs. It returns the token.
func WriteAuthConfig(path, tokenPath string) (string, error) {
	if b, err := os.ReadFile(tokenPath); err == nil {
		tok := strings.TrimSpace(string(b))
		if cfg, err := api.LoadAuthConfig(path); err == nil {
			for _, e := range cfg.Tokens {
				if e.SHA256 == api.HashToken(tok) {
					return tok, nil
				}
			}
		}
	}
	tok, entry, err := api.NewToken("dev", "sandq dev")
	if err != nil {
		return "", err
	}
	cfg := api.AuthConfig{
		Tenants: map[string]api.Tenant{"dev": {Queues: []string{"*"}, Operator: true}},
		Tokens:  []api.TokenEntry{entry},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	return tok, os.WriteFile(tokenPath, []byte(tok+"\n"), 0o600)
}
