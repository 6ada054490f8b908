package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
)

// sandqBin builds the sandq binary once for the suite and returns its path.
func sandqBin(t *testing.T) string {
	t.Helper()
	bin, err := env.suite.Sandq()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// sandqEnv is the environment of the real binary run against the test
// stack.
func sandqEnv() []string {
	return append(os.Environ(),
		"SANDQ_REDIS_ADDR="+env.stack.RedisAddr, "SANDQ_S3_ENDPOINT="+env.stack.MinioAddr,
		"SANDQ_S3_ACCESS_KEY=e2e-access", "SANDQ_S3_SECRET_KEY=e2e-secret-key", "SANDQ_S3_BUCKET=e2e")
}

// sandq runs the real binary against the test stack and returns its stdout,
// stderr and exit code.
func sandq(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(sandqBin(t), args...)
	cmd.Env = sandqEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestCLIEnqueueWaitJSONOnTheExample(t *testing.T) {
	out, errOut, code := sandq(t, "enqueue", "../../examples/sales_summary.py", "--input", "../../examples/sales.csv", "--wait", "--json")
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var r jobs.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	// The documented fields are all present in the JSON.
	var raw map[string]any
	json.Unmarshal([]byte(out), &raw)
	for _, f := range []string{"id", "status", "exit_code", "started_at", "finished_at", "duration_ms", "stdout", "stderr", "outputs"} {
		if _, ok := raw[f]; !ok {
			t.Errorf("field %s missing from %s", f, out)
		}
	}
	if r.Status != jobs.StatusSucceeded || len(r.Outputs) != 3 {
		t.Fatalf("status %s outputs %+v stderr %s", r.Status, r.Outputs, r.Stderr.Tail)
	}
	signatures := map[string]string{".png": "\x89PNG\r\n\x1a\n", ".json": "{", ".csv": "month,"}
	for _, o := range r.Outputs {
		body := download(t, o.URL)
		sum := sha256.Sum256(body)
		if hex.EncodeToString(sum[:]) != o.SHA256 {
			t.Errorf("%s: sha256 mismatch", o.Path)
		}
		if sig := signatures[filepath.Ext(o.Path)]; !strings.HasPrefix(string(body), sig) {
			t.Errorf("%s does not start with %q", o.Path, sig)
		}
	}
	// status --json prints the same document.
	st, _, code := sandq(t, "status", r.ID, "--json")
	if code != 0 || strings.TrimSpace(st) != strings.TrimSpace(out) {
		t.Errorf("status --json (exit %d) differs from enqueue --wait --json:\n%s\nvs\n%s", code, st, out)
	}
	human, _, code := sandq(t, "status", r.ID)
	if code != 0 || !strings.Contains(human, "status   succeeded") || !strings.Contains(human, "revenue_by_region.png") {
		t.Errorf("status (exit %d):\n%s", code, human)
	}
	if _, errOut, code := sandq(t, "cancel", r.ID); code != 2 || !strings.Contains(errOut, "already finished") {
		t.Errorf("cancel of a finished job: exit %d, %s", code, errOut)
	}
}

func TestCLIExitCodesAndIdempotencyMessage(t *testing.T) {
	dir := t.TempDir()
	fail := filepath.Join(dir, "fail.sh")
	os.WriteFile(fail, []byte("echo bad >&2; exit 3\n"), 0o644)
	out, _, code := sandq(t, "enqueue", fail, "--wait", "--json")
	var r jobs.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.Status != jobs.StatusFailed || *r.ExitCode != 3 {
		t.Errorf("failed job: exit %d, %s", code, out)
	}
	key := "cli-key-" + filepath.Base(dir)
	id1, _, code1 := sandq(t, "enqueue", fail, "--idempotency-key", key)
	id2, errOut, code2 := sandq(t, "enqueue", fail, "--idempotency-key", key)
	if code1 != 0 || code2 != 0 || id1 != id2 || !strings.Contains(errOut, "already exists for idempotency key") {
		t.Errorf("idempotent enqueue: %q %q, stderr %q", id1, id2, errOut)
	}
	if _, err := env.client.Wait(context.Background(), strings.TrimSpace(id1), nil); err != nil {
		t.Error(err)
	}
	_, errOut, code = sandq(t, "enqueue", fail, "--input", "/nonexistent/file.csv")
	if code != 2 || !strings.Contains(errOut, "file.csv") {
		t.Errorf("missing input: exit %d, %s", code, errOut)
	}
	_, errOut, code = sandq(t, "enqueue", fail, "--memory", "100GiB")
	if code != 2 || !strings.Contains(errOut, "memory") || !strings.Contains(errOut, "maximum") {
		t.Errorf("over-maximum memory: exit %d, %s", code, errOut)
	}
	if _, errOut, code := sandq(t, "status", "no-such-job"); code != 2 || !strings.Contains(errOut, "not found") {
		t.Errorf("unknown job: exit %d, %s", code, errOut)
	}
}
