package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// service is the block of one service in a resolved compose config: its
// line and the more indented ones after it.
func service(config, name string) string {
	_, rest, ok := strings.Cut(config, "\n  "+name+":\n")
	if !ok {
		return ""
	}
	var b strings.Builder
	for _, line := range strings.Split(rest, "\n") {
		if line != "" && !strings.HasPrefix(line, "   ") {
			break
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// snapshotsOnRE matches a worker environment that turns snapshots on (the
// parser quotes the value as it likes).
var snapshotsOnRE = regexp.MustCompile(`\n\s+SANDQ_SNAPSHOTS: ["']?true["']?\n`)

// TestComposeWorkerStartsFromSnapshots: compose's worker keeps warm
// sandboxes and starts python jobs from snapshot templates by default, and
// only the worker is given either setting.
func TestComposeWorkerStartsFromSnapshots(t *testing.T) {
	out, err := composeConfig(t, "../compose.yaml")
	if err != nil {
		t.Fatalf("compose.yaml does not validate: %v\n%s", err, out)
	}
	worker, api := service(out, "worker"), service(out, "api")
	if worker == "" || api == "" {
		t.Fatalf("no worker or api service in the resolved config:\n%s", out)
	}
	if !snapshotsOnRE.MatchString(worker) {
		t.Errorf("the worker does not run with SANDQ_SNAPSHOTS true:\n%s", worker)
	}
	if !strings.Contains(worker, "SANDQ_WARM_SANDBOXES: ") {
		t.Errorf("the worker has no SANDQ_WARM_SANDBOXES:\n%s", worker)
	}
	if strings.Contains(api, "SANDQ_SNAPSHOTS") || strings.Contains(api, "SANDQ_WARM_SANDBOXES") {
		t.Errorf("the api service got worker settings:\n%s", api)
	}
	// The check bites: the same file with snapshots turned off fails it.
	b, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	off := strings.Replace(string(b), "SANDQ_SNAPSHOTS: ${SANDQ_SNAPSHOTS:-true}", "SANDQ_SNAPSHOTS: ${SANDQ_SNAPSHOTS:-false}", 1)
	if off == string(b) {
		t.Fatal("compose.yaml does not set SANDQ_SNAPSHOTS as ${SANDQ_SNAPSHOTS:-true}")
	}
	p := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(p, []byte(off), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := composeConfig(t, p); err != nil || snapshotsOnRE.MatchString(service(out, "worker")) {
		t.Errorf("snapshots turned off still read as on (err %v):\n%s", err, service(out, "worker"))
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
