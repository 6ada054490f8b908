package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/keys"
)

// Causes of a running job's context ending.
var (
	errCanceled = errors.New("canceled on request")
	errShutdown = errors.New("worker shutting down")
)

// running tracks the jobs this worker is running, to cancel them by ID.
type running struct {
	mu   sync.Mutex
	jobs map[string]context.CancelCauseFunc
}

func (r *running) add(id string, cancel context.CancelCauseFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs == nil {
		r.jobs = map[string]context.CancelCauseFunc{}
	}
	r.jobs[id] = cancel
}

func (r *running) remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.jobs, id)
}

func (r *running) cancel(id string, cause error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.jobs[id]
	if ok {
		c(cause)
	}
	return ok
}

func (r *running) cancelAll(cause error) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.jobs {
		c(cause)
	}
	return len(r.jobs)
}

func (r *running) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.jobs)
}

// listenCancels delivers published cancellations to running jobs until ctx
// ends, resubscribing after connection losses.
func listenCancels(ctx context.Context, rdb redis.UniversalClient, jobs *running, logger *slog.Logger) {
	for ctx.Err() == nil {
		sub := rdb.Subscribe(ctx, keys.CancelChannel)
		ch := sub.Channel()
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case m, ok := <-ch:
				if !ok {
					break loop
				}
				if jobs.cancel(m.Payload, errCanceled) {
					logger.Info("cancel requested", "job_id", m.Payload)
				}
			}
		}
		sub.Close()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
