package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

// sandqRun is one job's trip through sandq.
type sandqRun struct {
	id string
	// scheduled: when it was due; sent: Enqueue called; enqueued: Enqueue
	// returned; result: the bench saw asynq's completed task with its
	// result; hook: the webhook arrived (zero without a receiver).
	scheduled, sent, enqueued, result, hook time.Time
	res                                     *jobs.Result
	// failure says why the job did not succeed as expected; empty when it
	// did.
	failure string
}

// ok reports whether the job succeeded with the expected output.
func (r *sandqRun) ok() bool { return r.failure == "" }

// sendJob enqueues the trivial job on queue and follows it until its result
// is available and, with a receiver, its webhook has arrived.
func (e *env) sendJob(ctx context.Context, v variant, queue string, scheduled time.Time) (*sandqRun, error) {
	r := &sandqRun{scheduled: scheduled, sent: time.Now()}
	if r.scheduled.IsZero() {
		r.scheduled = r.sent
	}
	url := ""
	if e.hooks != nil {
		url = e.hooks.url
	}
	enq, err := e.client.Enqueue(ctx, v.submission(queue, url))
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	r.enqueued, r.id = time.Now(), enq.ID
	if r.res, r.result, err = e.awaitResult(ctx, queue, enq.ID, 10*time.Minute); err != nil {
		return nil, err
	}
	if err := v.checkResult(r.res); err != nil {
		// A job that did not succeed is counted (and its time kept), not
		// fatal: the run goes on and reports it.
		r.failure = err.Error()
		e.recordFailure(err)
	}
	if e.hooks != nil {
		if r.hook, err = e.hooks.wait(ctx, enq.ID, 2*time.Minute); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// awaitResult follows the job until asynq shows it completed (or
// archived) and returns its result and when the bench saw it. It learns of
// the job's end by push: the worker publishes the job's ID once the result
// is written (jobs.Client.WatchDone). asynq marks the task completed only
// after the worker's handler returns, so after the message the bench reads
// the task at once and then 1, 2, 2 ... ms apart until it shows done:
// "seen" is late by at most 2 ms plus a Redis round trip.
// Without a message (pub/sub is at most once) it reads the task every
// jobs.Config.PollInterval.
func (e *env) awaitResult(ctx context.Context, queue, id string, limit time.Duration) (*jobs.Result, time.Time, error) {
	info, err := e.awaitTask(ctx, queue, id, time.Now().Add(limit))
	if err != nil {
		return nil, time.Time{}, err
	}
	seen := time.Now()
	// Archived: its retries ran out; the last attempt wrote an error
	// result.
	res, err := jobs.ParseResult(info.Result)
	if err != nil {
		return nil, seen, fmt.Errorf("job %s (%s, %s): result: %w", id, info.State, info.LastErr, err)
	}
	return res, seen, nil
}

// awaitTask follows task id of queue until asynq shows it completed or
// archived, learning of its end by push (see awaitResult), and returns it.
func (e *env) awaitTask(ctx context.Context, queue, id string, deadline time.Time) (*asynq.TaskInfo, error) {
	watch := e.client.WatchDone(ctx, id)
	defer watch.Stop()
	for {
		info, err := e.insp.GetTaskInfo(queue, id)
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", id, err)
		}
		if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
			return info, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s not done by %s (state %s)", id, deadline.Format(time.TimeOnly), info.State)
		}
		if err := watch.Next(ctx); err != nil {
			return nil, err
		}
	}
}

// completion says how the bench learns that a sandq job is done, for the
// report's conditions.
func (e *env) completion() string {
	return fmt.Sprintf("push: the worker publishes each job's ID on Redis channel %s once its result is written; the bench then reads the task at once and 1, 2, 2 ... ms apart (for up to 1s) until asynq shows it completed, and every %s without a message", keys.DoneChannel, e.cfg.PollInterval)
}

// began is when the worker took the job (enqueue time plus queue wait).
func (r *sandqRun) began() time.Time {
	return r.res.SubmittedAt.Add(time.Duration(r.res.Timings.QueueWaitMS) * time.Millisecond)
}

// stages are the run's stages in order, in milliseconds: the producer's
// Enqueue (from the scheduled send), the wait in the queue after it, the
// worker's stages from the result's timings, what follows the upload until
// the bench saw the result, and the webhook after that.
func (r *sandqRun) stages() []float64 {
	t := r.res.Timings
	endUpload := r.began().Add(time.Duration(t.TotalInWorkerMS) * time.Millisecond)
	s := []float64{
		ms(r.enqueued.Sub(r.scheduled)),
		ms(r.began().Sub(r.enqueued)),
		float64(t.MemoryWaitMS),
		float64(t.DownloadMS),
		float64(t.SandboxStartMS),
		float64(t.RunMS),
		float64(t.UploadMS),
		ms(r.result.Sub(endUpload)),
	}
	if !r.hook.IsZero() {
		s = append(s, ms(r.hook.Sub(r.result)))
	}
	return s
}

// sandqStageNames name stages(), with what each holds.
var sandqStageNames = []struct{ name, what string }{
	{"enqueue", "producer: validate, upload script and input, enqueue (from the scheduled send)"},
	{"queue_wait", "in Redis until a worker took it (timings.queue_wait_ms less the enqueue call)"},
	{"memory_wait", "timings.memory_wait_ms"},
	{"download", "timings.download_ms: fetch script and input, beside runsc create (inside sandbox_start, not added to it)"},
	{"sandbox_start", "timings.sandbox_start_ms: bundle, runsc create (beside the download) and start"},
	{"run", "timings.run_ms: script start until the container was deleted (runsc wait, delete)"},
	{"upload", "timings.upload_ms: collect and upload outputs and logs, presign"},
	{"finish", "residual after upload until the result was seen: result write, webhook enqueue, completion message, asynq completion, the bench's reads after the message (1, then 2 ms apart) (sandbox release runs beside them)"},
	{"webhook", "result seen until the signed webhook arrived (negative when it arrived before the bench saw the result)"},
}

// serialSandq runs n jobs one after another (after one warm-up) through a
// worker of concurrency 1 in mode m. When the mode's worker makes
// sandboxes ahead of its jobs (warm or restored), each job is sent once
// one is ready: the light-load case they are for.
func (e *env) serialSandq(ctx context.Context, v variant, n int, m mode) ([]*sandqRun, error) {
	return measured(ctx, e, phaseName(v, "serial", m), n+1, func() ([]*sandqRun, error) {
		return e.serialSandqRuns(ctx, v, n, m)
	})
}

// serialSandqRuns is serialSandq, unmeasured.
func (e *env) serialSandqRuns(ctx context.Context, v variant, n int, m mode) ([]*sandqRun, error) {
	queue := fmt.Sprintf("bench-floor-%s-%s-%d", m.key, v.name, e.next())
	w, err := e.startWorker(ctx, v, queue, 1, m)
	if err != nil {
		return nil, err
	}
	defer w.Shutdown()
	var runs []*sandqRun
	for i := range n + 1 {
		if err := waitAhead(ctx, w, m, 1); err != nil {
			return nil, err
		}
		r, err := e.sendJob(ctx, v, queue, time.Time{})
		if err != nil {
			if i == 0 {
				err = fmt.Errorf("warm-up: %w", err)
			}
			return nil, err
		}
		if i > 0 {
			runs = append(runs, r)
		}
	}
	return runs, nil
}

// waitAhead waits up to a minute for a worker in mode m to have at least
// n sandboxes made ahead ready (warm ones, or restored ones in its pool);
// it returns at once for a mode that makes none.
func waitAhead(ctx context.Context, w *worker.Worker, m mode, n int) error {
	if m.ahead() == 0 {
		return nil
	}
	ready := w.WarmReady
	what := "warm"
	if m.pool > 0 {
		ready, what = w.SnapshotPoolReady, "restored"
	}
	deadline := time.Now().Add(time.Minute)
	for ready() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d %s sandboxes ready after a minute", ready(), n, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// recordFailure counts a job that did not succeed and keeps the first
// reasons for the report.
func (e *env) recordFailure(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failed++
	if len(e.failures) < 10 {
		e.failures = append(e.failures, err.Error())
	}
}

// errJobs joins the errors of failed jobs (at most five), naming how many
// of total failed; nil when none did.
func errJobs(errs []error, total int) error {
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	n := len(failed)
	return fmt.Errorf("%d of %d jobs failed: %w", n, total, errors.Join(failed[:min(n, 5)]...))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
