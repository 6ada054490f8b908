package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
)

// attempt is one attempt of a job, as asynq hands it over.
type attempt struct {
	task              *asynq.Task
	id, queue         string
	retried, maxRetry int
	// n is the attempt's number, from 1.
	n      int
	logger *slog.Logger
	job    *jobs.Job
	// final: the task ends with this attempt whatever it returns (the job
	// was refused or given up), as on its last attempt.
	final bool
	// retention is how long the task's result is kept (its producer's
	// setting), once read; 0 before.
	retention time.Duration
}

func newAttempt(ctx context.Context, t *asynq.Task, logger *slog.Logger) *attempt {
	a := &attempt{task: t}
	a.id, _ = asynq.GetTaskID(ctx)
	a.queue, _ = asynq.GetQueueName(ctx)
	a.retried, _ = asynq.GetRetryCount(ctx)
	a.maxRetry, _ = asynq.GetMaxRetry(ctx)
	a.n = a.retried + 1
	a.logger = logger.With("job_id", a.id, "queue", a.queue, "attempt", a.n)
	return a
}

// last reports whether asynq archives the task if this attempt fails.
func (a *attempt) last() bool { return a.final || a.retried >= a.maxRetry }

// ProcessTask runs one attempt of a job. A job that ran — whatever its exit
// status, timeout, memory kill or cancellation — writes its result and
// returns nil. Only failures of the system return an error, so that asynq
// retries them; the last attempt also writes an error result. Each way an
// attempt can end is a named step below.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	a := newAttempt(ctx, t, h.logger)
	job, err := jobs.ParseJob(t.Payload())
	if err != nil {
		return h.rejectPayload(a, err)
	}
	a.job = job
	// An earlier attempt that wrote the result but could not queue the
	// webhook: the job has run; only the event is left to send.
	if prev := h.previousResult(a, job.ID); prev != nil && prev.Attempt <= a.n {
		return h.resendWebhook(ctx, a, prev)
	}
	if err := h.applyLimits(a); err != nil {
		return h.refuse(ctx, a, a.job.Queue, err)
	}
	if a.job.Queue != a.queue {
		return h.refuse(ctx, a, a.queue, fmt.Errorf("payload names queue %q but the job came from queue %q", a.job.Queue, a.queue))
	}
	if err := h.applyNetworkPolicy(a); err != nil {
		return h.passOn(ctx, a, err)
	}
	// The job counts as running, and can be cancelled or stopped, from
	// here until its result is written and the handler returns.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h.jobs.add(job.ID, cancel)
	defer h.jobs.remove(job.ID)
	res, err := h.runCancelable(runCtx, a)
	if err != nil {
		return h.failed(ctx, a, err)
	}
	return h.done(ctx, a, res)
}

// rejectPayload ends a task whose payload is not a job's, for good.
func (h *Handler) rejectPayload(a *attempt, err error) error {
	h.writeResult(context.Background(), a.task, a.logger, &jobs.Result{ID: a.id, Queue: a.queue, Status: jobs.StatusError, Reason: err.Error(), Attempt: a.n, Outputs: []jobs.OutputDoc{}})
	return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
}

// resendWebhook only queues the webhook of a job that has its result.
func (h *Handler) resendWebhook(ctx context.Context, a *attempt, prev *jobs.Result) error {
	a.logger.Info("job already has a result; queueing its webhook only")
	if err := h.awaitResultReplicated(ctx, a, prev); err != nil {
		return err
	}
	if err := h.queueWebhook(ctx, a, prev); err != nil {
		return err
	}
	h.notifyDone(ctx, a)
	return nil
}

// applyLimits applies this worker's limits to the job: a worker runs
// nothing over its own maxima, whatever the producer let through.
func (h *Handler) applyLimits(a *attempt) error {
	job := a.job
	req := jobs.LimitRequest{
		TimeoutSeconds: job.Limits.Timeout.Seconds(), MemoryBytes: job.Limits.Memory, DiskBytes: job.Limits.Disk,
		OutputBytes: job.Limits.OutputBytes, OutputFiles: job.Limits.OutputFiles,
	}
	// A task queued before jobs had a CPU limit takes this worker's
	// default.
	if job.Limits.CPUs != 0 {
		req.CPUs = &job.Limits.CPUs
	}
	lim, err := req.Resolve(h.cfg.DefaultLimits, h.cfg.MaxLimits)
	if err != nil {
		return fmt.Errorf("refused by this worker's limits: %w", err)
	}
	job.Limits = lim
	return nil
}

// refuse ends a job this worker will not run, for good, with an error
// result filed under queue.
func (h *Handler) refuse(ctx context.Context, a *attempt, queue string, err error) error {
	a.final = true
	h.finish(ctx, a, h.errorResult(a, queue, err))
	return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
}

// applyNetworkPolicy resolves the job's network against this worker's own
// policy for the queue the job came from, whatever the producer saw.
func (h *Handler) applyNetworkPolicy(a *attempt) error {
	if a.job.Network == nil {
		return nil
	}
	pol, err := h.cfg.Egress.ResolveNetwork(a.queue, a.job.Network.Asked)
	if err != nil {
		return fmt.Errorf("refused by this worker's network policy: %w", err)
	}
	a.job.Network = pol
	return nil
}

// passOn gives a job this worker's policy refuses back for another
// worker (or a later retry); on its last attempt it ends error.
func (h *Handler) passOn(ctx context.Context, a *attempt, err error) error {
	if a.last() {
		h.finish(ctx, a, h.errorResult(a, a.job.Queue, err))
	}
	return err
}

// runCancelable runs the job on runCtx, the context a cancellation or the
// worker's shutdown ends (ProcessTask registers it), cancelled at once when
// the job's cancellation was asked for before it started. An error from a
// run the shutdown interrupted wraps errShutdown.
func (h *Handler) runCancelable(runCtx context.Context, a *attempt) (*jobs.Result, error) {
	if h.cancelRequested(runCtx, a.job.ID) {
		h.jobs.cancel(a.job.ID, errCanceled)
	}
	res, err := h.run(runCtx, a)
	if err != nil && errors.Is(context.Cause(runCtx), errShutdown) {
		err = fmt.Errorf("%w: %w", errShutdown, err)
	}
	return res, err
}

// A verdict is what becomes of an attempt the system could not complete.
type verdict int

const (
	// requeue: the worker is stopping; asynq puts the task back as it
	// was, the attempt not counted.
	requeue verdict = iota
	// postpone: no room in the memory budget in time; back to the queue,
	// the attempt not counted (the worker's IsFailure).
	postpone
	// retry: a failure of the system; asynq retries after a backoff.
	retry
	// giveUp: the last attempt, or a failure no retry can mend: the job
	// ends error.
	giveUp
)

func (v verdict) String() string {
	return [...]string{"requeue", "postpone", "retry", "give up"}[v]
}

// decide is the verdict on an attempt that failed with err.
func decide(err error, retried, maxRetry int) verdict {
	switch {
	case errors.Is(err, errShutdown):
		return requeue
	case errors.Is(err, errMemoryBusy) && retried < maxRetry:
		// asynq archives a task on its last attempt whatever the error,
		// so a job without retries left ends error instead.
		return postpone
	case retried >= maxRetry || errors.Is(err, asynq.SkipRetry):
		return giveUp
	}
	return retry
}

// failed ends an attempt the system could not complete, as decide says.
func (h *Handler) failed(ctx context.Context, a *attempt, err error) error {
	switch decide(err, a.retried, a.maxRetry) {
	case requeue:
		// The sandbox is gone. Returning at once would count as a failed
		// attempt (and archive a job on its last one); instead the handler
		// waits, and asynq's shutdown requeues the task as it was.
		a.logger.Info("sandbox killed; job goes back to the queue", "err", err)
		h.jobs.remove(a.job.ID)
		<-h.requeued
		return err
	case postpone:
		a.logger.Info("no room in the memory budget in time; job goes back to the queue, attempt not counted", "err", err)
		return err
	case giveUp:
		a.final = true
		a.logger.Error("job could not run", "err", err, "final", true)
		res := h.errorResult(a, a.job.Queue, err)
		res.Image = cmp.Or(a.job.Image, h.cfg.Worker.Image)
		h.finish(ctx, a, res)
		return err
	default:
		a.logger.Error("job could not run", "err", err, "final", false)
		return err
	}
}

// done records a job that ran.
func (h *Handler) done(ctx context.Context, a *attempt, res *jobs.Result) error {
	if err := h.finish(ctx, a, res); err != nil {
		return err
	}
	if res.Status == jobs.StatusCanceled {
		h.rdb.Del(context.WithoutCancel(ctx), keys.Cancel(a.job.ID))
	}
	var exitCode any // the code, not the pointer's address
	if res.ExitCode != nil {
		exitCode = *res.ExitCode
	}
	a.logger.Info("job finished", "status", res.Status, "exit_code", exitCode, "duration_ms", res.DurationMS)
	return nil
}

// errorResult is the result of a job the system could not run.
func (h *Handler) errorResult(a *attempt, queue string, err error) *jobs.Result {
	now := h.now().UTC()
	job := a.job
	return &jobs.Result{
		ID: job.ID, Queue: queue, Status: jobs.StatusError, Reason: err.Error(), Runtime: job.Runtime,
		Attempt: a.n, SubmittedAt: job.SubmittedAt, StartedAt: now, FinishedAt: now,
		Limits: jobs.NewLimitsDoc(job.Limits), Outputs: []jobs.OutputDoc{}, Worker: h.name,
	}
}

// finish writes a final result, queues its webhook and announces the
// job's end (notify.go).
func (h *Handler) finish(ctx context.Context, a *attempt, res *jobs.Result) error {
	res.Webhook = h.webhookRef(a.job)
	if err := h.writeResult(ctx, a.task, a.logger, res); err != nil {
		return err
	}
	h.metrics.observe(res)
	if err := jobs.ReleaseOpen(context.WithoutCancel(ctx), h.rdb, a.job); err != nil {
		a.logger.Warn("taking the job out of its tenant's unfinished jobs", "err", err)
	}
	if err := h.awaitResultReplicated(ctx, a, res); err != nil {
		return err
	}
	if err := h.queueWebhook(ctx, a, res); err != nil {
		return err
	}
	h.notifyDone(ctx, a)
	return nil
}

// awaitResultReplicated waits, with RedisWaitReplicas, until replicas have
// the result its webhook is about to announce, so that a failover cannot
// lose it. Not confirmed, a job with attempts left is handed back
// (errWebhookPending: not counted); its next attempt finds the result and
// waits again before queueing the webhook. On the last attempt the
// webhook is queued anyway: better an event whose result a failover may
// still lose than none.
func (h *Handler) awaitResultReplicated(ctx context.Context, a *attempt, res *jobs.Result) error {
	err := jobs.AwaitReplicas(context.WithoutCancel(ctx), h.rdb, h.cfg, "result of job "+res.ID)
	switch {
	case err == nil:
		return nil
	case !a.last():
		a.logger.Warn("the result is not on enough replicas yet; handing the job back", "err", err)
		return fmt.Errorf("%w: %w", errWebhookPending, err)
	}
	a.logger.Error("the result of the job's last attempt is not on enough replicas; queueing its webhook anyway", "err", err)
	return nil
}

// errWebhookPending: the job has its result, but Redis refused its
// webhook's task. The job goes back to the queue, the attempt not counted
// (the worker's IsFailure), and its next attempt finds the result and only
// queues the webhook; the slot is not held while Redis recovers.
var errWebhookPending = errors.New("the job's result is written but its webhook is not queued yet")

// webhookRetries are the waits between tries to queue a webhook on a job's
// last attempt, where asynq would archive the task on any error.
var webhookRetries = []time.Duration{200 * time.Millisecond, time.Second, 3 * time.Second}

// queueWebhook queues the result's webhook. When Redis refuses, a job with
// attempts left is handed back (errWebhookPending); on its last attempt (or
// a final one: refused, given up) the handler tries a few more times on its
// clock first.
func (h *Handler) queueWebhook(ctx context.Context, a *attempt, res *jobs.Result) error {
	ctx = context.WithoutCancel(ctx)
	err := h.enqueueWebhook(ctx, res)
	if err == nil {
		return nil
	}
	a.logger.Warn("queueing the webhook", "try", 1, "err", err)
	if !a.last() {
		return fmt.Errorf("%w: %w", errWebhookPending, err)
	}
	for i, wait := range webhookRetries {
		h.sleep(wait)
		if err = h.enqueueWebhook(ctx, res); err == nil {
			return nil
		}
		a.logger.Warn("queueing the webhook", "try", i+2, "err", err)
	}
	a.logger.Error("could not queue the webhook of the job's last attempt", "err", err)
	return err
}
