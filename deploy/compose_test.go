package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv"
)

// composeConfig validates a compose file with docker-compose's own parser
// (Debian's docker-compose package; no Docker engine needed).
func composeConfig(t *testing.T, file string) (string, error) {
	t.Helper()
	testenv.NeedBinary(t, "docker-compose")
	out, err := exec.Command("docker-compose", "-f", file, "config").CombinedOutput()
	return string(out), err
}

func TestComposeFileValidates(t *testing.T) {
	out, err := composeConfig(t, "../compose.yaml")
	if err != nil {
		t.Fatalf("compose.yaml does not validate: %v\n%s", err, out)
	}
	for _, svc := range []string{"redis:", "minio:", "s3-setup:", "s3-users:", "worker:", "api:", "prometheus:", "grafana:"} {
		if !strings.Contains(out, "\n  "+svc) {
			t.Errorf("service %s missing from the resolved config", svc)
		}
	}
	for _, want := range []string{"--appendonly", "noeviction", "privileged: true", "deploy/s3-policy-worker.json:/etc/sandq/s3-policy-worker.json:ro", "SANDQ_AUTH_CONFIG: /etc/sandq/auth.json", "SANDQ_PROMETHEUS_URL: http://prometheus:9090", "exec sandq worker --images analysis"} {
		if !strings.Contains(out, want) {
			t.Errorf("resolved config lacks %q", want)
		}
	}
}

// TestComposeCheckBites shows the validation refuses a broken file.
func TestComposeCheckBites(t *testing.T) {
	b, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "    privileged: true", "    privileged: true\n    no_such_key: 1", 1)
	dir := t.TempDir()
	p := filepath.Join(dir, "compose.yaml")
	os.WriteFile(p, []byte(bad), 0o644)
	if out, err := composeConfig(t, p); err == nil {
		t.Fatalf("a compose file with an unknown key validated:\n%s", out)
	}
}

// TestAuthConfigLoads: the API server in compose.yaml starts with
// deploy/auth.json, so it must be a valid auth configuration.
func TestAuthConfigLoads(t *testing.T) {
	cfg, err := api.LoadAuthConfig("auth.json")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Tenants["ops"].Operator {
		t.Error("deploy/auth.json has no operator tenant for the dashboard")
	}
}
