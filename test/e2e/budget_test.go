package e2e

import (
	"context"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

// jobMemory is the memory limit of every job of the budget tests.
const jobMemory = 256 << 20

type budgetWorker struct {
	cfg    jobs.Config
	w      *worker.Worker
	runner *executor.RunscRunner
	client *jobs.Client
	queue  string
	stop   func()
}

// startBudgetWorker starts a second worker, with its own runner, serving
// queue alone, with concurrency 2, jobs of jobMemory and the given memory
// budget. It stops when the test ends, if the test has not stopped it.
func startBudgetWorker(t *testing.T, queue string, budget int64, modify func(*jobs.Config)) *budgetWorker {
	t.Helper()
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 2
	cfg.Worker.ShutdownGrace = time.Second
	cfg.Worker.MemoryBudget = jobs.MemoryBudget{Bytes: budget}
	cfg.DefaultLimits.Memory, cfg.MaxLimits.Memory = jobMemory, jobMemory
	if modify != nil {
		modify(&cfg)
	}
	s := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	return &budgetWorker{cfg: cfg, w: s.Worker, runner: s.Runner, client: s.Client, queue: queue, stop: s.Stop}
}

func (b *budgetWorker) enqueue(t *testing.T, name, script string) string {
	t.Helper()
	enq, err := b.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, name, script), Queue: b.queue})
	if err != nil {
		t.Fatal(err)
	}
	return enq.ID
}

// metric reads one sample of the worker's /metrics.
func (b *budgetWorker) metric(t *testing.T, name string) float64 {
	t.Helper()
	return workerMetric(t, b.w, name)
}

// waitMetric waits up to a minute for a metric to have a value.
func (b *budgetWorker) waitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for b.metric(t, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v after a minute, want %v", name, b.metric(t, name), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *budgetWorker) result(t *testing.T, id string) *jobs.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := b.client.Wait(ctx, id, nil)
	if err != nil {
		t.Fatalf("wait for %s: %v (last state %+v)", id, err, st)
	}
	return st.Result
}

// twoSleepers queues two jobs of jobMemory that sleep 3s each.
func twoSleepers(t *testing.T, b *budgetWorker) []string {
	t.Helper()
	return []string{b.enqueue(t, "a.sh", "sleep 3"), b.enqueue(t, "b.sh", "sleep 3")}
}

// results waits for the jobs to succeed and returns their results, the one
// that started first first.
func (b *budgetWorker) results(t *testing.T, ids []string) (first, second *jobs.Result) {
	t.Helper()
	var rs []*jobs.Result
	for _, id := range ids {
		r := b.result(t, id)
		wantStatus(t, r, jobs.StatusSucceeded)
		if r.Limits.MemoryBytes != jobMemory || r.Timings == nil {
			t.Fatalf("result %+v", r)
		}
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].StartedAt.Before(rs[j].StartedAt) })
	for _, r := range rs {
		t.Logf("job %s: memory wait %dms, ran %s to %s", r.ID, r.Timings.MemoryWaitMS, r.StartedAt.Format("15:04:05.000"), r.FinishedAt.Format("15:04:05.000"))
	}
	return rs[0], rs[1]
}

// TestMemoryBudgetKeepsJobsApart: with a budget that fits one job's memory
// limit but not two, a worker of concurrency 2 runs two jobs one after the
// other: the second waits for the first's sandbox to be gone. The gauges
// show the budget, the reservation and the waiting job.
func TestMemoryBudgetKeepsJobsApart(t *testing.T) {
	const budget = 400 << 20
	b := startBudgetWorker(t, "budget-apart", budget, nil)
	if v := b.metric(t, "sandq_worker_memory_budget_bytes"); v != budget {
		t.Errorf("sandq_worker_memory_budget_bytes %v, want %v", v, budget)
	}
	ids := twoSleepers(t, b)
	// While the first runs, the second waits, holding a slot but no memory.
	b.waitMetric(t, "sandq_worker_jobs_waiting_for_memory", 1)
	if v := b.metric(t, "sandq_worker_memory_reserved_bytes"); v != jobMemory {
		t.Errorf("reserved %v while one job runs, want %v", v, jobMemory)
	}
	if ids, _ := b.runner.Containers(context.Background()); len(ids) > 1 {
		t.Errorf("%d sandboxes at once with room for one", len(ids))
	}
	first, second := b.results(t, ids)
	if second.StartedAt.Before(first.FinishedAt) {
		t.Errorf("the jobs overlapped: the second started at %s, before the first ended at %s", second.StartedAt, first.FinishedAt)
	}
	if second.Timings.MemoryWaitMS < 1000 {
		t.Errorf("the second job waited %dms for memory, want at least the first's run", second.Timings.MemoryWaitMS)
	}
	b.waitMetric(t, "sandq_worker_memory_reserved_bytes", 0)
	b.waitMetric(t, "sandq_worker_jobs_waiting_for_memory", 0)
}

// TestMemoryBudgetLetsJobsOverlap: with room for both, the same two jobs
// run at the same time.
func TestMemoryBudgetLetsJobsOverlap(t *testing.T) {
	b := startBudgetWorker(t, "budget-overlap", 600<<20, nil)
	first, second := b.results(t, twoSleepers(t, b))
	if !second.StartedAt.Before(first.FinishedAt) {
		t.Errorf("the jobs did not overlap: the second started at %s, after the first ended at %s", second.StartedAt, first.FinishedAt)
	}
	for _, r := range []*jobs.Result{first, second} {
		if r.Timings.MemoryWaitMS > 500 {
			t.Errorf("job %s waited %dms for memory with room for both", r.ID, r.Timings.MemoryWaitMS)
		}
	}
}

// TestMemoryBudgetWaitEnds: a job waiting for memory ends its wait when it
// is cancelled (status canceled, no sandbox made), when it has waited as
// long as its attempt allows (back to the queue, the attempt not counted;
// or, on its last attempt, status error), and when the worker stops (back to
// the queue, unchanged).
func TestMemoryBudgetWaitEnds(t *testing.T) {
	ctx := context.Background()
	// With a 10s finish allowance a job waits at most 5s for memory.
	b := startBudgetWorker(t, "budget-wait", 400<<20, func(c *jobs.Config) { c.FinishAllowance = 10 * time.Second })
	long := b.enqueue(t, "long.sh", "sleep 600")
	deadline := time.Now().Add(time.Minute)
	for ids, _ := b.runner.Containers(ctx); len(ids) != 1; ids, _ = b.runner.Containers(ctx) {
		if time.Now().After(deadline) {
			t.Fatal("the long job's sandbox never started")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Cancelled while waiting.
	waiting := b.enqueue(t, "w.sh", "echo never")
	b.waitMetric(t, "sandq_worker_jobs_waiting_for_memory", 1)
	if _, err := b.client.Cancel(ctx, waiting); err != nil {
		t.Fatal(err)
	}
	r := b.result(t, waiting)
	wantStatus(t, r, jobs.StatusCanceled)
	if !strings.Contains(r.Reason, "waiting for room in the worker's memory budget") || r.Timings == nil || r.Timings.MemoryWaitMS == 0 || r.Stdout.Bytes != 0 {
		t.Errorf("canceled while waiting: %+v", r)
	}
	if ids, _ := b.runner.Containers(ctx); len(ids) != 1 {
		t.Errorf("sandboxes %v, want only the long job's", ids)
	}

	// Handed back after waiting as long as the attempt allows.
	back := b.enqueue(t, "h.sh", "echo later")
	deadline = time.Now().Add(time.Minute)
	for {
		st, err := b.client.Status(ctx, back)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == jobs.StateRetry {
			if st.Retried != 0 || st.Result != nil || !strings.Contains(st.LastError, "no room in the worker's memory budget") {
				t.Errorf("handed back: %+v", st)
			}
			t.Logf("handed back: %s", st.LastError)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never handed back; last state %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// On its last attempt (here its only one) a job cannot go back to the
	// queue without asynq archiving it: it ends error, with the reason.
	noRetry := b.cfg
	noRetry.MaxRetry = jobs.NoRetry
	last, err := jobs.NewClient(noRetry, env.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	enq, err := last.Enqueue(ctx, jobs.Submission{Script: file(t, "n.sh", "echo never"), Queue: b.queue})
	if err != nil {
		t.Fatal(err)
	}
	r = b.result(t, enq.ID)
	wantStatus(t, r, jobs.StatusError)
	// About 5s: the wait ends at the attempt's deadline less the timeout
	// and half the allowance, counted from when asynq took the job.
	if !regexp.MustCompile(`no room in the worker's memory budget: waited (4\.9\d*|5(\.\d+)?)s `).MatchString(r.Reason) || r.Attempt != 1 {
		t.Errorf("last attempt out of time for memory: %+v", r)
	}

	// Stopped while the long job runs and the other waits (or sits in the
	// retry set): both go back to the queue as they were.
	b.stop()
	if ids, _ := b.runner.Containers(ctx); len(ids) != 0 {
		t.Errorf("sandboxes left after shutdown: %v", ids)
	}
	for _, id := range []string{long, back} {
		st, err := b.client.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if (st.State != jobs.StatePending && st.State != jobs.StateRetry) || st.Retried != 0 || st.Result != nil {
			t.Errorf("after shutdown job %s is %+v, want pending or retry with no attempt counted", id, st)
		}
		if _, err := b.client.Cancel(ctx, id); err != nil {
			t.Error(err)
		}
	}
}
