package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

// manyJobs is how many jobs the Redis restart scenario queues. 300 take
// about two minutes on two cores, no longer than 60 do (the wait for asynq
// to recover what the SIGKILLed Redis lost dominates), so CI runs all 300.
func manyJobs() int { return 300 }

// doneIn counts the jobs of a queue that are done (completed or archived).
func doneIn(insp *asynq.Inspector, q string) (int, *asynq.QueueInfo) {
	info, err := insp.GetQueueInfo(q)
	if err != nil {
		return -1, nil
	}
	return info.Completed + info.Archived, info
}

// restartRedis stops Redis with sig, keeps it down for down, and starts it
// again on the same port and data (AOF). It returns how long it was gone.
func restartRedis(t *testing.T, sig syscall.Signal, down time.Duration) time.Duration {
	t.Helper()
	pid := env.stack.PID("redis")
	began := time.Now()
	if err := env.stack.StopService("redis", sig); err != nil {
		t.Fatal(err)
	}
	if pid == 0 || env.stack.PID("redis") != 0 {
		t.Fatalf("redis (pid %d) did not stop", pid)
	}
	time.Sleep(down)
	if err := env.stack.StartService(context.Background(), "redis"); err != nil {
		t.Fatal(err)
	}
	return time.Since(began)
}

// TestRedisRestart queues many trivial jobs, each with a webhook, on two
// workers, and restarts Redis twice while they are queued and running:
// once with SIGTERM (a clean restart: the AOF is complete) and once with
// SIGKILL (AOF everysec: up to a second of writes is lost). Every job must
// end with exactly one result and one webhook-id; none lost, none left
// active; the workers recover without a restart.
func TestRedisRestart(t *testing.T) {
	sc := newScenario(t, 3, "Redis restarted while jobs queue and run")
	const q = "chaos-redis"
	c := producer(t, q)
	insp := inspector(t)
	n := manyJobs()
	a := sc.worker("redis-a", workerOpts{queues: q})
	b := sc.worker("redis-b", workerOpts{queues: q})
	began := time.Now()
	for i := range n {
		sc.submit(c, jobs.Submission{
			Script: script("n.sh", "echo $1 > $OUTPUT_DIR/n\n"), Args: []string{strconv.Itoa(i)},
			Webhook: env.receiver.URL(), Limits: jobs.LimitRequest{TimeoutSeconds: 60, MemoryBytes: 128 << 20, DiskBytes: 64 << 20},
		})
	}
	enqueued := time.Since(began)
	sc.figure("%d jobs (shell, one output, a webhook each) enqueued in %s for 2 workers of concurrency 2", n, enqueued.Round(100*time.Millisecond))

	for _, r := range []struct {
		at   int
		sig  syscall.Signal
		down time.Duration
	}{{n / 3, syscall.SIGTERM, 3 * time.Second}, {2 * n / 3, syscall.SIGKILL, 3 * time.Second}} {
		deadline := time.Now().Add(15 * time.Minute)
		for {
			done, _ := doneIn(insp, q)
			if done >= r.at {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d jobs done after 15m", done, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		done, info := doneIn(insp, q)
		gone := restartRedis(t, r.sig, r.down)
		sc.figure("Redis stopped with %s and restarted (gone %s) at %d/%d done, %d active, %d pending",
			unixSignalName(r.sig), gone.Round(100*time.Millisecond), done, n, info.Active, info.Pending)
	}
	sc.checkResults(20 * time.Minute)
	_, info := doneIn(insp, q)
	if info == nil || info.Active+info.Pending+info.Retry+info.Scheduled != 0 || info.Completed != n {
		t.Errorf("queue after the run: %+v; want all %d completed", info, n)
	}
	for _, w := range []*worker{a, b} {
		if !w.alive() {
			t.Errorf("worker %s died", w.label)
		}
	}
	sc.figure("queue at the end: %d completed, %d archived, 0 active/pending/retry; both workers the same processes; %s from the first enqueue",
		info.Completed, info.Archived, time.Since(began).Round(time.Second))
	sc.finish(time.Minute)
}

func unixSignalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// TestRedisOutage stops Redis for 30 s while a job runs. During the
// outage a producer's enqueue fails with an error (nothing left in the
// store), the CLI exits 2, the API answers 503; afterwards the same
// worker process runs new jobs, the API takes them, and the job that was
// running ends with one result.
func TestRedisOutage(t *testing.T) {
	sc := newScenario(t, 4, "Redis unreachable for 30 s")
	const q = "chaos-outage"
	c := producer(t, q)
	a := sc.worker("outage-a", workerOpts{queues: q})
	apiURL, token := apiServer(t, q)

	running := sc.submit(c, jobs.Submission{
		Script:  script("through.sh", "echo before; sleep 40; echo after > $OUTPUT_DIR/x\n"),
		Webhook: env.receiver.URL(), Limits: small,
	})
	waitContainers(t, a.runscRoot(), 1, 2*time.Minute)
	objects0 := uploads(t)

	pid := env.stack.PID("redis")
	if err := env.stack.StopService("redis", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	t.Logf("redis (pid %d) stopped", pid)

	// A producer: a clear error, nothing kept.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_, err := c.Enqueue(ctx, jobs.Submission{Script: script("lost.sh", "echo never\n"), Limits: small})
	cancel()
	took := time.Since(stoppedAt)
	if err == nil {
		t.Fatal("enqueue with Redis down succeeded")
	}
	if !strings.Contains(err.Error(), "enqueue") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("enqueue error does not say what failed: %v", err)
	}
	if left := newUploads(t, objects0); len(left) > 0 {
		t.Errorf("a refused enqueue left objects in the store: %v", left)
	}
	sc.figure("producer enqueue during the outage: error after %s, %q; no object left", took.Round(100*time.Millisecond), shorten(err.Error(), 110))

	// The CLI: exit code 2 and a message.
	never := filepath.Join(t.TempDir(), "never.sh")
	if err := os.WriteFile(never, []byte("echo never\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cli := exec.Command(env.bin, "enqueue", never, "--queue", q)
	cli.Env = workerEnv()
	var stderr bytes.Buffer
	cli.Stderr = &stderr
	cliErr := cli.Run()
	code := cli.ProcessState.ExitCode()
	if code != 2 || !strings.Contains(stderr.String(), "not queued") || !strings.Contains(stderr.String(), "connection refused") {
		t.Errorf("sandq enqueue during the outage: exit %d (%v), stderr %q; want exit 2 with the error", code, cliErr, stderr.String())
	}

	// The API: 503 for a submission and for /healthz.
	sub, subBody := postJob(t, apiURL, token, "echo never\n")
	health, err := http.Get(apiURL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	health.Body.Close()
	if sub != http.StatusServiceUnavailable || health.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("API during the outage: POST /v1/jobs %d %s, /healthz %d; want 503", sub, subBody, health.StatusCode)
	}
	if left := newUploads(t, objects0); len(left) > 0 {
		t.Errorf("refused submissions left objects in the store: %v", left)
	}
	sc.figure("during the outage: sandq enqueue exit %d (%q), API POST /v1/jobs %d (%s), /healthz %d", code, shorten(strings.TrimSpace(stderr.String()), 60), sub, shorten(strings.Join(strings.Fields(subBody), " "), 90), health.StatusCode)

	time.Sleep(time.Until(stoppedAt.Add(30 * time.Second)))
	if err := env.stack.StartService(context.Background(), "redis"); err != nil {
		t.Fatal(err)
	}
	outage := time.Since(stoppedAt)
	backAt := time.Now()
	if !a.alive() {
		t.Fatalf("the worker died during the outage:\n%s", a.log())
	}
	after := sc.submit(c, jobs.Submission{Script: script("after.sh", "echo after > $OUTPUT_DIR/x\n"), Webhook: env.receiver.URL(), Limits: small})
	r := sc.result(after, 3*time.Minute)
	if r.Worker != a.name {
		t.Errorf("the job after the outage ran on %s, want the same worker %s", r.Worker, a.name)
	}
	code, body := postJob(t, apiURL, token, "echo via api > $OUTPUT_DIR/x\n")
	if code != http.StatusCreated {
		t.Errorf("API after the outage: %d %s", code, body)
	} else {
		var j api.Job
		json.Unmarshal([]byte(body), &j)
		if j.JobStatus != nil {
			sc.mu.Lock()
			sc.jobs = append(sc.jobs, &tracked{id: j.ID, queue: q, want: []jobs.Status{jobs.StatusSucceeded}})
			sc.mu.Unlock()
		}
	}
	sc.figure("Redis back after %s: the same worker (pid %d) ran a new job %s later; the API took one (%d)",
		outage.Round(100*time.Millisecond), a.pid, time.Since(backAt).Round(100*time.Millisecond), code)
	rr := sc.result(running, 5*time.Minute)
	sc.figure("the job running through the outage ended %s on attempt %d (its lease lapsed with Redis gone: %v)", rr.Status, rr.Attempt, rr.Attempt > 1)
	sc.finish(3 * time.Minute)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// apiServer serves the job API in-process over the suite's services, with
// a tenant that may use queue q.
func apiServer(t *testing.T, q string) (string, string) {
	t.Helper()
	url, toks := sandqtest.API(t, jobsConfig(q), env.store, env.logger, map[string]api.Tenant{"chaos": {Queues: []string{q}}})
	return url, toks["chaos"]
}

// postJob submits a shell script through the API.
func postJob(t *testing.T, url, token, body string) (int, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.WriteField("spec", `{"limits":{"timeout_seconds":60,"memory_bytes":268435456}}`)
	w, _ := mw.CreateFormFile("script", "api.sh")
	io.WriteString(w, body)
	mw.Close()
	req, _ := http.NewRequest("POST", url+"/v1/jobs", &b)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	client := http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(out))
}

// uploads lists the producers' uploads in the store (the in-<nonce>/
// prefixes of jobs).
func uploads(t *testing.T) map[string]bool {
	t.Helper()
	keys, err := env.store.List(context.Background(), "jobs/")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		if strings.Contains(k, "/in-") {
			out[k] = true
		}
	}
	return out
}

func newUploads(t *testing.T, before map[string]bool) []string {
	var out []string
	for k := range uploads(t) {
		if !before[k] {
			out = append(out, k)
		}
	}
	return out
}
