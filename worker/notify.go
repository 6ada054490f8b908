package worker

import (
	"context"
	"time"

	"github.com/sandq/sandq/internal/keys"
)

// notifyTimeout bounds the completion message's publish: the result is
// written already, and a waiter that misses the message sees the job done
// at its next poll, so a slow Redis is not waited out.
const notifyTimeout = 2 * time.Second

// notifyDone publishes the job's ID on keys.DoneChannel once its final
// result is written and its webhook queued, so that producers waiting for
// it (jobs.Client.Wait, the API's event streams) learn of its end without
// polling. asynq marks the task completed (or archived) only after the
// handler returns, so a waiter may still read the job as active for a
// moment after the message; jobs.DoneWatch reads again in a short burst.
// Best effort: a failed publish is logged and never fails the job.
func (h *Handler) notifyDone(ctx context.Context, a *attempt) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), notifyTimeout)
	defer cancel()
	if err := h.rdb.Publish(ctx, keys.DoneChannel, a.id).Err(); err != nil {
		a.logger.Warn("publishing the job's end; waiters see it at their next poll", "err", err)
	}
}
