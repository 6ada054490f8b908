package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
)

// hostPython is the Python the client is tested with: Debian's, as a fresh
// Debian 12 machine has it (scripts/install-deps.sh installs it with venv,
// pip, setuptools and wheel), never a shim on the PATH of whoever runs the
// tests.
const hostPython = "/usr/bin/python3"

// pythonClientDir is the Python client's package.
var pythonClientDir = filepath.Join("..", "..", "clients", "python")

// pythonStack serves the job API for the Python client's tests: a worker of
// its own on queue "python" (the server's default queue), which runs the
// test image and the analysis image, and three tenants: "py", "pyother"
// (for the cross-tenant 404) and "pyslow" (one request a second, for
// Retry-After). It returns the server's URL and the tenants' tokens.
func pythonStack(t *testing.T) (string, map[string]string) {
	t.Helper()
	if _, err := image.Resolve(env.cfg.Worker.ImageDir, analysisImage); err != nil {
		t.Fatalf("the %s image: %v\n(make test builds it)", analysisImage, err)
	}
	const queue = "python"
	cfg := env.cfg
	cfg.Queue = queue
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Images = []string{analysisImage}
	cfg.Worker.Concurrency = 2
	cfg.Worker.ShutdownGrace = time.Second
	startWorker(t, cfg, executor.RunscConfig{StateDir: env.state, Network: &executor.NetworkConfig{}})
	mine := []string{queue}
	return sandqtest.API(t, cfg, env.store, nil, map[string]api.Tenant{
		"py":      {Queues: mine},
		"pyother": {Queues: mine},
		"pyslow":  {Queues: mine, RatePerSecond: 1, Burst: 1},
	})
}

// pythonEnv is a clean environment for the host's Python: no variables of
// the user's (a PYTHONPATH, a virtualenv, pip's settings) reach it.
func pythonEnv(home string, extra ...string) []string {
	return append([]string{
		"PATH=/usr/bin:/bin", "HOME=" + home, "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
		"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1",
	}, extra...)
}

// runPython runs a command for at most 15 minutes and returns its
// combined output, failing the test when it fails.
func runPython(t *testing.T, dir string, environ []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, environ
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPythonClient runs the Python client's test suite (clients/python/
// tests) with the host's Python against the real server, workers and
// sandboxes; then installs the package into a fresh venv with pip, without
// a package index, and runs the README's five-line script: the spreadsheet
// example on the analysis image, its chart saved. It fails, not skips,
// without /usr/bin/python3 or the analysis image.
func TestPythonClient(t *testing.T) {
	if _, err := os.Stat(hostPython); err != nil {
		t.Fatalf("%s: %v (Debian's python3, with python3-venv, python3-setuptools and python3-wheel: make deps installs them)", hostPython, err)
	}
	url, toks := pythonStack(t)
	server := []string{"SANDQ_SERVER=" + url, "SANDQ_TOKEN=" + toks["py"]}

	t.Run("suite", func(t *testing.T) {
		out := runPython(t, pythonClientDir, pythonEnv(t.TempDir(), append(server,
			"SANDQ_OTHER_TOKEN="+toks["pyother"], "SANDQ_SLOW_TOKEN="+toks["pyslow"])...),
			hostPython, "-m", "unittest", "discover", "-s", "tests", "-v")
		t.Logf("python -m unittest:\n%s", out)
		// Every test ran: the suite skips the server's tests only without
		// a server, which this test gives it.
		if strings.Contains(out, "skipped") || !regexp.MustCompile(`(?m)^OK$`).MatchString(out) {
			t.Fatalf("the Python suite did not pass whole (a test was skipped or failed)")
		}
		if n := regexp.MustCompile(`(?m)^Ran (\d+) tests?`).FindStringSubmatch(out); n == nil || n[1] == "0" {
			t.Fatalf("the Python suite ran no test")
		}
	})

	t.Run("pip install and the README script", func(t *testing.T) {
		tmp := t.TempDir()
		// pip builds in the source tree (build/, sandq.egg-info): it gets
		// a copy, and the repository stays clean.
		src := filepath.Join(tmp, "src")
		if err := os.CopyFS(src, os.DirFS(pythonClientDir)); err != nil {
			t.Fatal(err)
		}
		venv := filepath.Join(tmp, "venv")
		environ := pythonEnv(tmp, server...)
		// --system-site-packages: setuptools and wheel are Debian's, as on
		// a machine without a package index; --no-build-isolation keeps
		// pip from fetching them, --no-index from fetching anything.
		runPython(t, tmp, environ, hostPython, "-m", "venv", "--system-site-packages", venv)
		out := runPython(t, tmp, environ, filepath.Join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index", src)
		if !strings.Contains(out, "Successfully installed sandq-") {
			t.Fatalf("pip install:\n%s", out)
		}
		// The venv imports the installed copy, not the source.
		where := strings.TrimSpace(runPython(t, tmp, environ, filepath.Join(venv, "bin", "python"), "-c", "import sandq; print(sandq.__file__)"))
		if !strings.HasPrefix(where, venv+"/lib/") || !strings.Contains(where, "site-packages") {
			t.Fatalf("sandq imported from %s, not the venv's site-packages", where)
		}

		script := readmeScript(t)
		work := filepath.Join(tmp, "work")
		for _, name := range []string{"budget_report.py", "budget.xlsx", "actuals.csv"} {
			b, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(work, "examples"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(work, "examples", name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(work, "report.py"), []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		out = runPython(t, work, environ, filepath.Join(venv, "bin", "python"), "report.py")
		t.Logf("the README script:\n%s", out)
		for _, want := range []string{"actuals.csv: 229 expenses", "chart: budget/budget_vs_actual.png"} {
			if !strings.Contains(out, want) {
				t.Errorf("the script's output lacks %q", want)
			}
		}
		png, err := os.ReadFile(filepath.Join(work, "budget", "budget_vs_actual.png"))
		if err != nil {
			t.Fatalf("the chart: %v", err)
		}
		if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("budget_vs_actual.png is not a PNG: starts %q", png[:min(len(png), 8)])
		}
		if xlsx, err := os.ReadFile(filepath.Join(work, "budget", "budget_summary.xlsx")); err != nil {
			t.Errorf("the workbook: %v", err)
		} else {
			wantXLSX(t, "budget_summary.xlsx", xlsx, "xl/charts/chart1.xml")
		}
	})
}

// readmeScript is the first python block of clients/python/README.md: the
// five-line script the README promises, tested as written.
func readmeScript(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pythonClientDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```python\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("clients/python/README.md has no python block")
	}
	script := string(m[1])
	if lines := strings.Count(strings.TrimSpace(script), "\n") + 1; lines > 5 {
		t.Fatalf("the README's script is %d lines, not five:\n%s", lines, script)
	}
	if !strings.Contains(script, "budget_report.py") {
		t.Fatalf("the README's first python block is not the spreadsheet example:\n%s", script)
	}
	// docs/api.md shows the same script.
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, []byte("```python\n"+script+"```")) {
		t.Errorf("docs/api.md does not show the script of clients/python/README.md as it is:\n%s", script)
	}
	return script
}
