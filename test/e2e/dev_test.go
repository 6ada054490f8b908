package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// startDev runs `sandq dev` with args (global flags, "dev", its flags)
// and env added to the test's environment, and waits for its banner: its
// standard output up to the line giving the data directory. It stops
// (SIGTERM, then SIGKILL) when the test ends, if it still runs.
func startDev(t *testing.T, args []string, env ...string) (*testenv.Process, string) {
	t.Helper()
	cmd := exec.Command(sandqBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	dev := testenv.Start(t, cmd, filepath.Join(t.TempDir(), "dev.out"))
	out, err := dev.WaitOutput("\n  data", 90*time.Second)
	if err != nil {
		t.Fatalf("sandq dev did not come up: %v", err)
	}
	i := strings.Index(out, "\n  data") + 1
	if n := strings.IndexByte(out[i:], '\n'); n >= 0 {
		out = out[:i+n+1]
	}
	return dev, out
}

// TestDevStackRunsAJobAndStopsCleanly runs `sandq dev` as a user would,
// submits a job to it with the CLI, then stops it with SIGTERM: every
// child (Redis, MinIO, the worker) must be gone.
func TestDevStackRunsAJobAndStopsCleanly(t *testing.T) {
	redisAddr := testenv.FreeAddr(t)
	s3 := testenv.FreeAddr(t)
	global := []string{"--redis-addr", redisAddr, "--s3-endpoint", s3}
	dir := t.TempDir()
	metricsAddr := testenv.FreeAddr(t)
	listen := testenv.FreeAddr(t)
	dev, banner := startDev(t, append(global, "dev", "--data-dir", dir, "--minio-console-port", fmt.Sprint(testenv.FreePort(t))),
		"SANDQ_METRICS_ADDR="+metricsAddr, "SANDQ_LISTEN="+listen)
	if !strings.Contains(banner, redisAddr) || !strings.Contains(banner, s3) {
		t.Errorf("banner does not say where things listen:\n%s", banner)
	}
	children := childPIDs(dev.Pid())
	if len(children) < 4 {
		t.Fatalf("want redis, minio, a worker and the server as children, got %v", children)
	}

	script := filepath.Join(dir, "hello.py")
	os.WriteFile(script, []byte("import os\nopen(os.environ['OUTPUT_DIR'] + '/hello.txt', 'w').write('hi')\n"), 0o644)
	cmd := exec.Command(sandqBin(t), append(global, "enqueue", script, "--wait", "--json")...)
	res, err := cmd.Output()
	var r jobs.Result
	if err != nil || json.Unmarshal(res, &r) != nil || r.Status != jobs.StatusSucceeded || len(r.Outputs) != 1 {
		t.Fatalf("job against sandq dev: %v\n%s", err, res)
	}
	if string(download(t, r.Outputs[0].URL)) != "hi" {
		t.Error("output content")
	}

	// The worker serves its metrics, which count the job.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	metricsText, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metricsText), `sandq_jobs_finished_total{queue="default",status="succeeded"} 1`) {
		t.Errorf("the dev worker's metrics do not count the job:\n%.2000s", metricsText)
	}

	// asynqmon shows the queue and the finished job.
	resp, err = http.Get("http://" + listen + "/monitoring/api/queues/default/completed_tasks")
	if err != nil {
		t.Fatalf("asynqmon: %v", err)
	}
	mon, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(mon), r.ID) {
		t.Errorf("asynqmon does not list the finished job %s: %d %.500s", r.ID, resp.StatusCode, mon)
	}
	// The dashboard is open to this host only because dev asks for it, and
	// only under the server's own names (DNS rebinding).
	if !strings.Contains(banner, "/monitoring/ (open to this host)") {
		t.Errorf("banner does not say the dashboard is open to this host:\n%s", banner)
	}
	req, _ := http.NewRequest("GET", "http://"+listen+"/monitoring/api/queues/default/completed_tasks", nil)
	req.Host = "evil.example"
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("asynqmon of sandq dev for Host evil.example: %v", err)
	} else if resp.Body.Close(); resp.StatusCode != 421 {
		t.Errorf("asynqmon of sandq dev for Host evil.example: %d, want 421", resp.StatusCode)
	}

	// The API: a job submitted with curl -F, with the token the banner
	// points at, finishes; /monitoring shows it; the server's /metrics
	// counts the request.
	if !strings.Contains(banner, "http://"+listen+"/v1/jobs") {
		t.Errorf("banner does not give the API's URL:\n%s", banner)
	}
	tokenB, err := os.ReadFile(filepath.Join(dir, "dev-token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenB))
	if !strings.Contains(banner, token) {
		t.Errorf("banner does not give the dev token:\n%s", banner)
	}
	curl, err := exec.Command("curl", "-sS", "-H", "Authorization: Bearer "+token,
		"-F", `spec={"args":["curl"]};type=application/json`, "-F", "script=@"+script, "http://"+listen+"/v1/jobs").Output()
	var created struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err != nil || json.Unmarshal(curl, &created) != nil || created.ID == "" {
		t.Fatalf("curl -F to /v1/jobs: %v\n%s", err, curl)
	}
	var done struct {
		State  string       `json:"state"`
		Result *jobs.Result `json:"result"`
	}
	for deadline := time.Now().Add(2 * time.Minute); done.State != "done" && time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		b, err := exec.Command("curl", "-sS", "-H", "Authorization: Bearer "+token, "http://"+listen+"/v1/jobs/"+created.ID).Output()
		if err != nil || json.Unmarshal(b, &done) != nil {
			t.Fatalf("GET the job: %v %s", err, b)
		}
	}
	if done.Result == nil || done.Result.Status != jobs.StatusSucceeded {
		t.Fatalf("curl-submitted job: %+v", done)
	}
	resp, err = http.Get("http://" + listen + "/monitoring/api/queues/default/completed_tasks")
	if err != nil {
		t.Fatal(err)
	}
	mon, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(mon), created.ID) {
		t.Errorf("asynqmon does not list the curl-submitted job %s", created.ID)
	}
	resp, err = http.Get("http://" + listen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metricsText), `sandq_api_requests_total{code="201",method="POST",route="/v1/jobs"} 1`) {
		t.Errorf("the server's metrics do not count the submission:\n%.3000s", metricsText)
	}

	// The dev stack's network policy lets default-queue jobs reach npm.
	res, err = exec.Command(sandqBin(t), append(global, "enqueue", "../../examples/npm_install.sh", "--network", "npm", "--wait", "--json")...).Output()
	r = jobs.Result{}
	if err != nil || json.Unmarshal(res, &r) != nil || r.Status != jobs.StatusSucceeded || r.Egress == nil {
		t.Fatalf("npm example against sandq dev: %v\n%s", err, res)
	}
	refused, allowed := false, false
	for _, e := range r.Egress.Requests {
		refused = refused || (e.Host == "example.org" && e.Decision == "refused")
		allowed = allowed || e.Decision == "allowed"
	}
	if !refused || !allowed || !strings.Contains(r.Stdout.Tail, "is-number(42): true") {
		t.Errorf("npm example: egress %+v\nstdout %s", r.Egress, r.Stdout.Tail)
	}

	dev.Signal(syscall.SIGTERM)
	select {
	case <-dev.Exited():
		if err := dev.Err(); err != nil {
			t.Errorf("sandq dev exit: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("sandq dev did not stop within 90s of SIGTERM")
	}
	for _, pid := range children {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("child %d still running after sandq dev stopped", pid)
		}
	}
}

// childPIDs lists the direct children of pid.
func childPIDs(pid int) []int {
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		var state string
		var ppid, self int
		fmt.Sscanf(rest, "%s %d", &state, &ppid)
		fmt.Sscanf(string(b), "%d", &self)
		if ppid == pid {
			out = append(out, self)
		}
	}
	return out
}
