package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/executortest"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// TestClassify maps every way a sandbox can end to the job's status.
func TestClassify(t *testing.T) {
	code := func(n int) *int { return &n }
	lim := jobs.Limits{Timeout: 90 * time.Second, Memory: 256 << 20}
	cases := []struct {
		name   string
		out    executor.Outcome
		status jobs.Status
		reason string
		err    string
	}{
		{"exit 0", executor.Outcome{ExitCode: code(0)}, jobs.StatusSucceeded, "", ""},
		{"exit 3", executor.Outcome{ExitCode: code(3)}, jobs.StatusFailed, "", ""},
		{"killed by a signal", executor.Outcome{Signal: "SIGSEGV"}, jobs.StatusFailed, "", ""},
		{"timeout", executor.Outcome{TimedOut: true, Signal: "SIGKILL"}, jobs.StatusTimedOut, "killed after the 1m30s timeout", ""},
		{"out of memory", executor.Outcome{OOMKilled: true}, jobs.StatusOutOfMemory, "killed by the 256MiB memory limit", ""},
		{"task limit", executor.Outcome{TaskLimited: true}, jobs.StatusFailed, "limit of 64 tasks", ""},
		{"canceled", executor.Outcome{Interrupted: errCanceled}, jobs.StatusCanceled, "canceled on request", ""},
		// A cancellation wins over what it caused.
		{"canceled, then timed out", executor.Outcome{Interrupted: fmt.Errorf("x: %w", errCanceled), TimedOut: true}, jobs.StatusCanceled, "canceled on request", ""},
		{"worker shutting down", executor.Outcome{Interrupted: errShutdown}, "", "", "interrupted: worker shutting down"},
		// A timeout wins over the memory kill it may cause.
		{"timeout and oom", executor.Outcome{TimedOut: true, OOMKilled: true}, jobs.StatusTimedOut, "timeout", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, reason, err := classify(&c.out, lim, 64)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, c.out.Interrupted) {
					t.Fatalf("err %v, want one saying %q and wrapping the cause", err, c.err)
				}
				return
			}
			if err != nil || status != c.status || !strings.Contains(reason, c.reason) || (c.reason == "" && reason != "") {
				t.Fatalf("got %q %q %v, want %q %q", status, reason, err, c.status, c.reason)
			}
		})
	}
}

// TestDecide gives each kind of failed attempt its verdict.
func TestDecide(t *testing.T) {
	sys := errors.New("prepare sandbox: no space left")
	cases := []struct {
		name              string
		err               error
		retried, maxRetry int
		want              verdict
	}{
		{"system error, retries left", sys, 0, 3, retry},
		{"system error, last attempt", sys, 3, 3, giveUp},
		{"system error, no retries at all", sys, 0, 0, giveUp},
		{"not worth a retry", fmt.Errorf("input gone: %w", asynq.SkipRetry), 0, 3, giveUp},
		{"memory busy, retries left", fmt.Errorf("%w: waited", errMemoryBusy), 1, 3, postpone},
		{"memory busy, last attempt", fmt.Errorf("%w: waited", errMemoryBusy), 3, 3, giveUp},
		{"shutdown", fmt.Errorf("%w: run sandbox: killed", errShutdown), 0, 3, requeue},
		{"shutdown on the last attempt", fmt.Errorf("%w: killed", errShutdown), 3, 3, requeue},
	}
	for _, c := range cases {
		if got := decide(c.err, c.retried, c.maxRetry); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// TestQueueWebhookWhenRedisRefuses: a job with attempts left is handed back
// at once, its slot not held; its last attempt tries again on the
// handler's clock before giving up.
func TestQueueWebhookWhenRedisRefuses(t *testing.T) {
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer dead.Close()
	var slept []time.Duration
	h := &Handler{client: asynq.NewClientFromRedisClient(dead), cfg: jobs.Config{}.WithDefaults(), sleep: func(d time.Duration) { slept = append(slept, d) }}
	res := &jobs.Result{ID: "j1", Queue: "default", Webhook: &jobs.WebhookRef{URL: "https://hooks.example/x", ID: "msg_j1"}}
	a := &attempt{retried: 0, maxRetry: 2, n: 1, logger: slog.New(slog.DiscardHandler)}
	err := h.queueWebhook(context.Background(), a, res)
	if !errors.Is(err, errWebhookPending) || len(slept) != 0 {
		t.Fatalf("attempts left: %v after sleeping %v; want errWebhookPending at once", err, slept)
	}
	a.retried, a.n = 2, 3
	err = h.queueWebhook(context.Background(), a, res)
	if err == nil || errors.Is(err, errWebhookPending) || len(slept) != len(webhookRetries) {
		t.Fatalf("last attempt: %v after sleeping %v; want an error after %v", err, slept, webhookRetries)
	}
	// A final attempt with retries left (the job refused or given up) is
	// archived whatever it returns: it tries on the clock too.
	slept = nil
	a = &attempt{retried: 0, maxRetry: 2, n: 1, logger: slog.New(slog.DiscardHandler), final: true}
	err = h.queueWebhook(context.Background(), a, res)
	if err == nil || errors.Is(err, errWebhookPending) || len(slept) != len(webhookRetries) {
		t.Fatalf("final attempt with retries left: %v after sleeping %v; want an error after %v", err, slept, webhookRetries)
	}
	// Nothing to queue, nothing to fail.
	if err := h.queueWebhook(context.Background(), a, &jobs.Result{ID: "j2"}); err != nil {
		t.Fatal(err)
	}
}

// fakeRig is a worker running jobs through executortest's fake runner on a
// real Redis and a real object store (started by devstack, as any user).
type fakeRig struct {
	t      *testing.T
	cfg    jobs.Config
	runner *executortest.Runner
	w      *Worker
	client *jobs.Client
	stop   func()
}

// services are the Redis and MinIO the package's tests share (started as
// the test's user); each rig has a Redis database and a bucket of its own.
var (
	services = &testenv.Shared{Options: testenv.ServicesOptions{AccessKey: "workertestroot", SecretKey: "workertestroot-secret"}}
	rigs     atomic.Int32
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := services.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the test services:", err)
	}
	os.Exit(code)
}

// modify changes the worker's config only; the producer's is the rest.
// runner, when given, is the fake runner (its Dir is set here).
func newFakeRig(t *testing.T, modify func(*jobs.Config), runner ...*executortest.Runner) *fakeRig {
	t.Helper()
	stack := services.Get(t)
	n := int(rigs.Add(1))
	if n > 15 {
		t.Fatal("more fake rigs than Redis has databases")
	}
	ctx := context.Background()
	access, err := stack.ProvisionBucket(ctx, fmt.Sprintf("fakerig-%d", n), devstack.ProvisionOptions{ExpiryDays: jobs.Config{}.ObjectExpiryDays()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := jobs.Config{
		RedisAddr: stack.RedisAddr, RedisDB: n,
		Storage:  storage.Config{Endpoint: stack.MinioAddr, AccessKey: access.Worker.AccessKey, SecretKey: access.Worker.SecretKey, Bucket: access.Bucket},
		Worker:   jobs.WorkerConfig{ImageDir: fakeImageDir(t), StateDir: t.TempDir(), Concurrency: 4, ShutdownGrace: 200 * time.Millisecond, TaskCheckInterval: 20 * time.Millisecond},
		MaxRetry: 1, PollInterval: 20 * time.Millisecond,
	}
	pcfg := cfg
	if modify != nil {
		modify(&cfg)
	}
	store, err := storage.New(cfg.WithDefaults().Storage)
	if err != nil {
		t.Fatal(err)
	}
	fake := &executortest.Runner{Job: scripted}
	if len(runner) > 0 {
		fake = runner[0]
	}
	fake.Dir = t.TempDir()
	r := &fakeRig{t: t, cfg: cfg, runner: fake}
	if r.w, err = New(cfg, r.runner, store, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := r.w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r.stop = sync.OnceFunc(r.w.Shutdown)
	t.Cleanup(r.stop)
	pcfg.Storage.AccessKey, pcfg.Storage.SecretKey = access.Producer.AccessKey, access.Producer.SecretKey
	pstore, err := storage.New(pcfg.WithDefaults().Storage)
	if err != nil {
		t.Fatal(err)
	}
	if r.client, err = jobs.NewClient(pcfg, pstore, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.client.Close() })
	return r
}

// blocked hears the ID of each job whose "block" script is running.
var blocked = make(chan string, 16)

// scripted is what a fake sandbox does: what its script says.
func scripted(ctx context.Context, sb *executortest.Sandbox) executortest.Run {
	b, err := os.ReadFile(filepath.Join(sb.JobDir(), "job.sh"))
	if err != nil {
		return executortest.Run{Err: err}
	}
	code := func(n int) *int { return &n }
	switch cmd := strings.TrimSpace(string(b)); cmd {
	case "succeed":
		in, _ := os.ReadFile(filepath.Join(sb.InputsDir(), "in.txt"))
		os.WriteFile(filepath.Join(sb.OutputsDir(), "out.txt"), append([]byte("got "), in...), 0o644)
		return executortest.Run{Outcome: executor.Outcome{ExitCode: code(0)}, Stdout: "hello\n", Stderr: "warn\n"}
	case "fail":
		return executortest.Run{Outcome: executor.Outcome{ExitCode: code(3)}, Stderr: "boom\n"}
	case "timeout":
		return executortest.Run{Outcome: executor.Outcome{TimedOut: true, Signal: "SIGKILL"}}
	case "oom":
		return executortest.Run{Outcome: executor.Outcome{OOMKilled: true, Signal: "SIGKILL"}}
	case "fork bomb":
		return executortest.Run{Outcome: executor.Outcome{TaskLimited: true}}
	case "block":
		blocked <- sb.Spec.Name
		<-ctx.Done()
		return executortest.Run{}
	case "system error":
		return executortest.Run{Err: fmt.Errorf("%w: runsc start failed", executor.ErrSandbox)}
	case "hopeless":
		return executortest.Run{Err: fmt.Errorf("bad bundle: %w", asynq.SkipRetry)}
	}
	return executortest.Run{Err: fmt.Errorf("fake job: unknown script %q", b)}
}

func textFile(name, text string) jobs.File {
	return jobs.File{Name: name, Size: int64(len(text)), Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(text)), nil }}
}

func (r *fakeRig) enqueue(script string, modify func(*jobs.Submission)) string {
	r.t.Helper()
	s := jobs.Submission{Script: textFile("job.sh", script), Inputs: []jobs.File{textFile("in.txt", "input")}}
	if modify != nil {
		modify(&s)
	}
	e, err := r.client.Enqueue(context.Background(), s)
	if err != nil {
		r.t.Fatal(err)
	}
	return e.ID
}

func (r *fakeRig) wait(id string) *jobs.JobStatus {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := r.client.Wait(ctx, id, nil)
	if err != nil {
		r.t.Fatalf("job %s: %v", id, err)
	}
	return st
}

// TestJobStatusesThroughFakeRunner runs a job to each status through the
// whole handler (download, run, classify, upload, result, retry) with the
// fake runner standing in for runsc.
func TestJobStatusesThroughFakeRunner(t *testing.T) {
	r := newFakeRig(t, nil)
	cases := []struct {
		script   string
		status   jobs.Status
		reason   string
		attempts int
		exit     *int
	}{
		{"succeed", jobs.StatusSucceeded, "", 1, new(int)},
		{"fail", jobs.StatusFailed, "", 1, func() *int { n := 3; return &n }()},
		{"timeout", jobs.StatusTimedOut, "timeout", 1, nil},
		{"oom", jobs.StatusOutOfMemory, "memory limit", 1, nil},
		{"fork bomb", jobs.StatusFailed, "limit of", 1, nil},
		// A failure of the system is retried (MaxRetry 1), then the job
		// ends error.
		{"system error", jobs.StatusError, "runsc start failed", 2, nil},
		// One no retry can mend ends error at once.
		{"hopeless", jobs.StatusError, "bad bundle", 1, nil},
	}
	ids := map[string]string{}
	for _, c := range cases {
		ids[c.script] = r.enqueue(c.script, nil)
	}
	for _, c := range cases {
		st := r.wait(ids[c.script])
		res := st.Result
		if res == nil {
			t.Errorf("%s: done without a result: %+v", c.script, st)
			continue
		}
		if res.Status != c.status || !strings.Contains(res.Reason, c.reason) || res.Attempt != c.attempts {
			t.Errorf("%s: status %s (%q), attempt %d; want %s (%q), attempt %d", c.script, res.Status, res.Reason, res.Attempt, c.status, c.reason, c.attempts)
		}
		if (c.exit == nil) != (res.ExitCode == nil) || (c.exit != nil && *c.exit != *res.ExitCode) {
			t.Errorf("%s: exit code %v, want %v", c.script, res.ExitCode, c.exit)
		}
	}
	// What the succeeding job wrote and printed is in its result, stored.
	res := r.wait(ids["succeed"]).Result
	if len(res.Outputs) != 1 || res.Outputs[0].Path != "out.txt" || res.Outputs[0].Size != int64(len("got input")) {
		t.Errorf("outputs %+v, want out.txt with the input's copy", res.Outputs)
	}
	if res.Stdout == nil || res.Stdout.Tail != "hello\n" || res.Stderr == nil || res.Stderr.Tail != "warn\n" {
		t.Errorf("logs %+v %+v", res.Stdout, res.Stderr)
	}
	// Each attempt had its own sandbox, and every one was released.
	if n := len(r.runner.Prepared()); n != len(cases)+1 {
		t.Errorf("%d sandboxes prepared, want %d (one per attempt)", n, len(cases)+1)
	}
	waitFor(t, func() bool { return r.runner.Live() == 0 })
}

// TestCancelAndShutdownThroughFakeRunner: a cancelled running job ends
// canceled; a job running when the worker stops goes back to the queue
// untouched (its attempt not counted), its sandbox released.
func TestCancelAndShutdownThroughFakeRunner(t *testing.T) {
	r := newFakeRig(t, nil)
	id := r.enqueue("block", nil)
	r.waitRunning(id)
	if out, err := r.client.Cancel(context.Background(), id); err != nil || out != jobs.CancelSignalled {
		t.Fatalf("cancel: %v %v", out, err)
	}
	if res := r.wait(id).Result; res.Status != jobs.StatusCanceled || !strings.Contains(res.Reason, "canceled on request") {
		t.Fatalf("cancelled job: %s %q", res.Status, res.Reason)
	}
	id = r.enqueue("block", nil)
	r.waitRunning(id)
	r.stop()
	st, err := r.client.Status(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != jobs.StatePending || st.Retried != 0 || st.Result != nil {
		t.Fatalf("after shutdown: state %s, retried %d, result %v; want pending, 0, none", st.State, st.Retried, st.Result)
	}
	if n := r.runner.Live(); n != 0 {
		t.Fatalf("%d sandboxes left after shutdown", n)
	}
}

// TestRefusalsThroughFakeRunner: a job over this worker's limits is refused
// at once, without a sandbox.
func TestRefusalsThroughFakeRunner(t *testing.T) {
	r := newFakeRig(t, func(c *jobs.Config) { c.MaxLimits.Memory, c.DefaultLimits.Memory = 512<<20, 256<<20 })
	// The producer allows more than this worker does.
	id := r.enqueue("succeed", func(s *jobs.Submission) { s.Limits.MemoryBytes = 1 << 30 })
	res := r.wait(id).Result
	if res.Status != jobs.StatusError || !strings.Contains(res.Reason, "refused by this worker's limits") || res.Attempt != 1 {
		t.Fatalf("over the worker's limits: %s %q attempt %d", res.Status, res.Reason, res.Attempt)
	}
	if n := len(r.runner.Prepared()); n != 0 {
		t.Fatalf("%d sandboxes made for a refused job", n)
	}
}

// waitRunning waits until job id's "block" script runs in its sandbox.
func (r *fakeRig) waitRunning(id string) {
	r.t.Helper()
	select {
	case got := <-blocked:
		if got != id {
			r.t.Fatalf("job %s runs, want %s", got, id)
		}
	case <-time.After(30 * time.Second):
		r.t.Fatalf("job %s not running after 30s", id)
	}
}

// TestSetUpFailuresThroughFakeRunner: a sandbox that cannot be prepared or
// created is a failure of the system: retried (MaxRetry 1), then the job
// ends error, and every sandbox made for it is released.
func TestSetUpFailuresThroughFakeRunner(t *testing.T) {
	for _, c := range []struct {
		name   string
		runner *executortest.Runner
		reason string
	}{
		{"prepare", &executortest.Runner{Job: scripted, PrepareErr: errors.New("no space for scratch")}, "prepare sandbox: no space for scratch"},
		{"create", &executortest.Runner{Job: scripted, CreateErr: errors.New("runsc create failed")}, "create sandbox: runsc create failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newFakeRig(t, nil, c.runner)
			res := r.wait(r.enqueue("succeed", nil)).Result
			if res.Status != jobs.StatusError || !strings.Contains(res.Reason, c.reason) || res.Attempt != 2 {
				t.Fatalf("%s failing: %s %q attempt %d; want error %q after 2 attempts", c.name, res.Status, res.Reason, res.Attempt, c.reason)
			}
			if n := len(r.runner.Prepared()); n != 2 {
				t.Errorf("%d sandboxes asked for, want one per attempt", n)
			}
			waitFor(t, func() bool { return r.runner.Live() == 0 })
		})
	}
}

// TestRetrying: a write that fails while Redis fails over is tried again
// after each wait, on the given clock, and stops at the first success or
// after the last wait.
func TestRetrying(t *testing.T) {
	waits := []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}
	for _, tc := range []struct {
		failures, wantTries int
		wantErr             bool
	}{
		{0, 1, false}, {1, 2, false}, {3, 4, false}, {4, 4, true}, {10, 4, true},
	} {
		var slept []time.Duration
		var failed []int
		tries := 0
		err := retrying(context.Background(), waits, func(d time.Duration) { slept = append(slept, d) }, func() error {
			tries++
			if tries <= tc.failures {
				return fmt.Errorf("try %d: connection refused", tries)
			}
			return nil
		}, func(try int, _ error) { failed = append(failed, try) })
		if tries != tc.wantTries || (err != nil) != tc.wantErr || len(slept) != tc.wantTries-1 || len(failed) != min(tc.failures, len(waits)+1) {
			t.Errorf("%d failures: %d tries, err %v, slept %v, failures heard %v; want %d tries, error %v", tc.failures, tries, err, slept, failed, tc.wantTries, tc.wantErr)
		}
		if tc.wantErr && err.Error() != fmt.Sprintf("try %d: connection refused", tries) {
			t.Errorf("%d failures: returned %v, want the last try's error", tc.failures, err)
		}
	}
	// The lease lapsed (asynq cancelled the attempt): no more tries.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tries, slept := 0, 0
	err := retrying(ctx, waits, func(time.Duration) { slept++ }, func() error { tries++; return ctx.Err() }, func(int, error) {})
	if !errors.Is(err, context.Canceled) || tries != 1 || slept != 0 {
		t.Errorf("cancelled: %d tries, %d sleeps, err %v; want 1 try, none", tries, slept, err)
	}
	var total time.Duration
	for _, d := range resultRetries {
		total += d
	}
	if total >= 25*time.Second {
		t.Errorf("result retries take %v: a job's 30 s lease may lapse first", total)
	}
}

// TestAwaitResultReplicated: with RedisWaitReplicas and no replica to
// confirm a result, a job with attempts left is handed back (not counted,
// its webhook not queued yet); its last attempt queues the webhook anyway.
func TestAwaitResultReplicated(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	defer rdb.Close()
	h := &Handler{rdb: rdb, cfg: jobs.Config{RedisWaitReplicas: 1, RedisWaitTimeout: 100 * time.Millisecond}}
	res := &jobs.Result{ID: "j1"}
	a := &attempt{retried: 0, maxRetry: 2, n: 1, logger: slog.New(slog.DiscardHandler)}
	err := h.awaitResultReplicated(context.Background(), a, res)
	if !errors.Is(err, errWebhookPending) || !errors.Is(err, jobs.ErrNotReplicated) {
		t.Fatalf("attempts left, no replica: %v; want errWebhookPending wrapping jobs.ErrNotReplicated", err)
	}
	a.retried, a.n = 2, 3
	if err := h.awaitResultReplicated(context.Background(), a, res); err != nil {
		t.Fatalf("last attempt, no replica: %v; want the webhook queued anyway (nil)", err)
	}
	a.retried, a.n = 0, 1
	h.cfg.RedisWaitReplicas = 0
	if err := h.awaitResultReplicated(context.Background(), a, res); err != nil {
		t.Fatalf("no replicas asked for: %v", err)
	}
}
