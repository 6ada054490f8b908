package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"path"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/jobs"
)

// run runs the job in a fresh sandbox and uploads what it left: a result
// for every way the job itself ends, an error when the system failed.
func (h *Handler) run(ctx context.Context, a *attempt) (_ *jobs.Result, retErr error) {
	job := a.job
	began := h.now()
	res := &jobs.Result{
		ID: job.ID, Queue: job.Queue, Runtime: job.Runtime, Image: cmp.Or(job.Image, h.cfg.Worker.Image), Attempt: a.n,
		SubmittedAt: job.SubmittedAt, Limits: jobs.NewLimitsDoc(job.Limits), Outputs: []jobs.OutputDoc{}, Worker: h.name,
		Timings: &jobs.Timings{QueueWaitMS: max(0, began.Sub(job.SubmittedAt).Milliseconds())},
	}
	res.Inputs = jobs.InputDocs(job)
	if errors.Is(context.Cause(ctx), errCanceled) {
		return canceledEarly(res, "canceled before it started", began, began), nil
	}
	spec, digest, err := h.sandboxSpec(job)
	if err != nil {
		return nil, err
	}
	res.ImageDigest = digest
	// The job's memory limit is reserved from the worker's budget before its
	// sandbox is made, and given back after the sandbox is gone.
	release, err := h.reserveMemory(ctx, job)
	if err != nil {
		if errors.Is(context.Cause(ctx), errCanceled) {
			return canceledEarly(res, "canceled while waiting for room in the worker's memory budget", began, h.now()), nil
		}
		return nil, err
	}
	reserved := h.now()
	res.Timings.MemoryWaitMS = reserved.Sub(began).Milliseconds()
	// The sandbox is released, and then the job's memory given back to the
	// budget, after the sandbox is gone. After a run that produced a result
	// this happens beside the result's write: the container is deleted
	// already, and only scratch space, mounts and network are left.
	var sb executor.Sandbox
	defer func() {
		teardown := func() {
			if sb != nil {
				if err := sb.Release(ctx); err != nil {
					a.logger.Error("releasing the sandbox", "sandbox", sb.ID(), "err", err)
				}
			}
			release()
		}
		if retErr == nil {
			h.background(teardown)
		} else {
			teardown()
		}
	}()
	sb, fetched, err := h.setUp(ctx, a, spec)
	if err != nil {
		return nil, err
	}
	res.Timings.DownloadMS = fetched.Sub(reserved).Milliseconds()
	live := h.followLive(a, sb)
	out, err := sb.Run(ctx)
	// The sandbox is gone and its pipes drained: the output is over.
	live.Close()
	if err != nil {
		return nil, fmt.Errorf("run sandbox: %w", err)
	}
	if err := h.record(res, job, out); err != nil {
		return nil, err
	}
	if err := h.save(ctx, a, sb, out, res); err != nil {
		return nil, err
	}
	res.Timings.UploadMS = h.now().Sub(out.FinishedAt).Milliseconds()
	res.Timings.TotalInWorkerMS = h.now().Sub(began).Milliseconds()
	return res, nil
}

// canceledEarly is the result of a job cancelled before its sandbox ran.
func canceledEarly(res *jobs.Result, reason string, began, now time.Time) *jobs.Result {
	res.Status, res.Reason = jobs.StatusCanceled, reason
	res.StartedAt, res.FinishedAt = now.UTC(), now.UTC()
	res.Stdout, res.Stderr = &jobs.LogDoc{}, &jobs.LogDoc{}
	res.Timings.MemoryWaitMS = now.Sub(began).Milliseconds()
	return res
}

// sandboxSpec is what the job's sandbox runs, and the digest of its image.
func (h *Handler) sandboxSpec(job *jobs.Job) (executor.Spec, string, error) {
	interp, ok := jobs.Interpreter(job.Runtime)
	if !ok {
		return executor.Spec{}, "", fmt.Errorf("unknown runtime %q: %w", job.Runtime, asynq.SkipRetry)
	}
	img, err := h.jobImage(job)
	if err != nil {
		return executor.Spec{}, "", err
	}
	w := h.cfg.Worker
	spec := executor.Spec{
		Name: job.ID, Image: img.Rootfs, Env: sandboxEnv(job.Env), UID: w.UID, GID: w.GID,
		Args:   append(append(append([]string{}, interp...), path.Join(executor.JobMount, job.Script.Name)), job.Args...),
		Limits: h.sandboxLimits(job.Limits),
	}
	if job.Network != nil {
		e := h.cfg.Egress
		spec.Egress = &executor.Egress{
			Policy: egress.Policy{Hosts: job.Network.Hosts, Ports: job.Network.Ports},
			Limits: egress.Limits{MaxConns: e.MaxConns, MaxBytes: e.MaxBytes, IdleTimeout: e.IdleTimeout, TotalTimeout: e.TotalTimeout},
		}
	}
	return spec, img.Digest, nil
}

// sandboxLimits are the sandbox's limits for a job's: the job's own and
// the worker's (pids, logs).
func (h *Handler) sandboxLimits(l jobs.Limits) executor.Limits {
	return sandboxLimits(h.cfg.Worker, l)
}

func sandboxLimits(w jobs.WorkerConfig, l jobs.Limits) executor.Limits {
	return executor.Limits{
		Timeout: l.Timeout, Memory: l.Memory, Disk: l.Disk, OutputBytes: l.OutputBytes, OutputFiles: l.OutputFiles, CPUs: l.CPUs,
		Pids: w.Pids, LogBytes: w.LogBytes, LogTail: w.LogTail,
	}
}

// setUp makes the job's sandbox (a warm one when the runner has one ready)
// and fills it with the script and inputs, and says when they were in. The
// container is created while they download: its file systems are mounted
// only when it starts. On error the sandbox returned
// (if any) is still to be released.
func (h *Handler) setUp(ctx context.Context, a *attempt, spec executor.Spec) (_ executor.Sandbox, fetched time.Time, _ error) {
	sb, err := h.runner.Prepare(ctx, spec)
	if err != nil {
		return nil, fetched, fmt.Errorf("prepare sandbox: %w", err)
	}
	a.logger = a.logger.With("sandbox", sb.ID())
	if executor.IsWarm(sb) {
		a.logger = a.logger.With("warm", true)
	}
	if executor.IsRestored(sb) {
		a.logger = a.logger.With("restored", true)
	}
	created := make(chan error, 1)
	go func() { created <- sb.Create(ctx) }()
	ferr := h.fetchAll(ctx, a.job, sb)
	fetched = h.now()
	if cerr := <-created; cerr != nil {
		return sb, fetched, fmt.Errorf("create sandbox: %w", cerr)
	}
	return sb, fetched, ferr
}

// record fills the result with how the sandbox ended.
func (h *Handler) record(res *jobs.Result, job *jobs.Job, out *executor.Outcome) error {
	res.StartedAt, res.FinishedAt = out.StartedAt.UTC(), out.FinishedAt.UTC()
	res.DurationMS = out.FinishedAt.Sub(out.StartedAt).Milliseconds()
	res.Timings.SandboxStartMS = out.StartedAt.Sub(out.CreatedAt).Milliseconds()
	res.Timings.WarmStart = out.Warm
	res.Timings.StartMode = out.StartMode
	if res.Timings.StartMode == "" {
		// A runner that does not say (a test's fake): cold unless warm.
		res.Timings.StartMode = jobs.StartCold
		if out.Warm {
			res.Timings.StartMode = jobs.StartWarm
		}
	}
	res.Timings.RunMS = res.DurationMS
	if out.CPUSeconds != nil {
		// Milliseconds are as precise as the run time beside it.
		cpu := math.Round(*out.CPUSeconds*1000) / 1000
		res.CPUSeconds = &cpu
	}
	res.ExitCode, res.Signal = out.ExitCode, out.Signal
	if job.Network != nil {
		res.Egress = egressDoc(job.Network, out.Egress, out.Bypass)
	}
	var err error
	res.Status, res.Reason, err = classify(out, job.Limits, h.cfg.Worker.Pids)
	return err
}

// classify maps how a sandbox ended to the job's status and its reason; an
// interruption other than a cancellation (the worker stopping) is not the
// job's outcome but an error.
func classify(out *executor.Outcome, l jobs.Limits, pids int64) (jobs.Status, string, error) {
	switch {
	case out.Interrupted != nil && errors.Is(out.Interrupted, errCanceled):
		return jobs.StatusCanceled, "canceled on request; the sandbox was killed", nil
	case out.Interrupted != nil:
		return "", "", fmt.Errorf("interrupted: %w", out.Interrupted)
	case out.TimedOut:
		return jobs.StatusTimedOut, fmt.Sprintf("killed after the %s timeout", l.Timeout), nil
	case out.OOMKilled:
		return jobs.StatusOutOfMemory, fmt.Sprintf("killed by the %s memory limit", jobs.FormatSize(l.Memory)), nil
	case out.TaskLimited:
		return jobs.StatusFailed, fmt.Sprintf("killed: the sandbox hit its limit of %d tasks (processes and threads) and died", pids), nil
	case out.ExitCode != nil && *out.ExitCode == 0:
		return jobs.StatusSucceeded, "", nil
	}
	return jobs.StatusFailed, "", nil
}

// save uploads the outputs and logs under the run's own prefix and fits
// the result to its size cap. Uploads go on after a cancellation: the
// job's outputs are its result. A failed attempt's partial uploads are
// removed.
func (h *Handler) save(ctx context.Context, a *attempt, sb executor.Sandbox, out *executor.Outcome, res *jobs.Result) error {
	upCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.FinishAllowance)
	defer cancel()
	runPrefix := fmt.Sprintf("%srun-%d-%s/", jobs.JobPrefix(a.job.ID), a.n, sb.ID())
	err := h.upload(upCtx, sb, out, runPrefix, res)
	if err == nil {
		// As finish will write it: the webhook reference counts too.
		res.Webhook = h.webhookRef(a.job)
		err = h.capResult(upCtx, res, runPrefix)
	}
	if err != nil {
		if rerr := h.store.RemovePrefix(upCtx, runPrefix); rerr != nil {
			a.logger.Warn("removing a failed attempt's partial uploads", "err", rerr)
		}
		return err
	}
	return nil
}
