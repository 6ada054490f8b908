package worker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sandq/sandq/jobs"
	"golang.org/x/sync/semaphore"
)

// memoryBudget hands out a worker's memory budget to the jobs it runs: a job
// reserves its memory limit before its sandbox is made and gives it back
// once the sandbox is gone. Reservations are served first come, first
// served, so a large job is not starved by small ones behind it.
type memoryBudget struct {
	total    int64
	sem      *semaphore.Weighted
	reserved atomic.Int64
	waiting  atomic.Int64
}

func newMemoryBudget(total int64) *memoryBudget {
	return &memoryBudget{total: total, sem: semaphore.NewWeighted(total)}
}

// reserve waits until n bytes of the budget are free and takes them, or
// until ctx ends. On success the caller must call the returned release.
func (b *memoryBudget) reserve(ctx context.Context, n int64) (release func(), err error) {
	if n > b.total {
		// The worker refuses to start with a maximum over its budget; this
		// only guards against waiting forever.
		return nil, fmt.Errorf("the job's memory limit %s is over this worker's memory budget of %s", jobs.FormatSize(n), jobs.FormatSize(b.total))
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if !b.sem.TryAcquire(n) {
		b.waiting.Add(1)
		err = b.sem.Acquire(ctx, n)
		b.waiting.Add(-1)
		if err != nil {
			return nil, fmt.Errorf("waiting for %s of the worker's memory budget: %w", jobs.FormatSize(n), err)
		}
	}
	b.reserved.Add(n)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			b.reserved.Add(-n)
			b.sem.Release(n)
		}
	}, nil
}

// errMemoryBusy: a job waited for room in the memory budget as long as its
// attempt allows. It goes back to the queue, the attempt not counted (see
// the worker's IsFailure), and runs when there is room, here or elsewhere;
// on its last attempt it ends error instead.
var errMemoryBusy = errors.New("no room in the worker's memory budget")

// reserveMemory reserves the job's memory limit in the worker's budget,
// waiting for room until ctx ends or until the attempt has only the job's
// timeout and half the finish allowance left (asynq would fail the attempt
// at its deadline); then it gives up with errMemoryBusy.
func (h *Handler) reserveMemory(ctx context.Context, job *jobs.Job) (func(), error) {
	wctx := ctx
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, d.Add(-(job.Limits.Timeout + h.cfg.FinishAllowance/2)))
		defer cancel()
	}
	start := time.Now()
	release, err := h.budget.reserve(wctx, job.Limits.Memory)
	if err != nil && ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w: waited %s for %s of %s, with %s reserved by running jobs",
			errMemoryBusy, time.Since(start).Round(time.Millisecond), jobs.FormatSize(job.Limits.Memory), jobs.FormatSize(h.budget.total), jobs.FormatSize(h.budget.reserved.Load()))
	}
	return release, err
}
