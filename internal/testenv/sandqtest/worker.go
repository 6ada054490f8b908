package sandqtest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
	"github.com/sandq/sandq/worker"
)

// Worker is a sandq worker running in the test binary on a runsc runner of
// its own, with a client of the same configuration.
type Worker struct {
	*worker.Worker
	Runner *executor.RunscRunner
	Client *jobs.Client

	stopOnce sync.Once
	cleanup  cleanup.Stack
}

// StartWorker starts a worker with cfg on a new runner configured by rc,
// reaching S3 through store, and a client with cfg and store. Close stops
// it all. For a TestMain; a test calls NewWorker.
func StartWorker(ctx context.Context, cfg jobs.Config, rc executor.RunscConfig, store *storage.Store, logger *slog.Logger) (_ *Worker, err error) {
	w := &Worker{}
	defer w.cleanup.ReleaseOnError(ctx, &err)
	if w.Runner, err = executor.NewRunscRunner(ctx, rc); err != nil {
		return nil, err
	}
	w.cleanup.Add("runner", w.Runner.Close)
	if w.Worker, err = worker.New(cfg, w.Runner, store, logger); err != nil {
		return nil, err
	}
	if err := w.Worker.Start(ctx); err != nil {
		return nil, err
	}
	w.cleanup.Add("worker", func(context.Context) error { w.Stop(); return nil })
	if w.Client, err = jobs.NewClient(cfg, store, logger); err != nil {
		return nil, err
	}
	w.cleanup.Add("client", func(context.Context) error { return w.Client.Close() })
	return w, nil
}

// NewWorker is StartWorker for a test: all of it stops when the test ends.
func NewWorker(t testing.TB, cfg jobs.Config, rc executor.RunscConfig, store *storage.Store) *Worker {
	t.Helper()
	ctx := context.Background()
	w, err := StartWorker(ctx, cfg, rc, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return w
}

// Stop shuts the worker down (gracefully, once); the runner and client
// stay until Close.
func (w *Worker) Stop() { w.stopOnce.Do(w.Worker.Shutdown) }

// Close stops the worker and closes its client and runner.
func (w *Worker) Close(ctx context.Context) error { return w.cleanup.Release(ctx) }

// Run submits sub with the worker's client and waits up to within for its
// result.
func (w *Worker) Run(t testing.TB, sub jobs.Submission, within time.Duration) *jobs.Result {
	t.Helper()
	enq, err := w.Client.Enqueue(context.Background(), sub)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	st, err := w.Client.Wait(ctx, enq.ID, nil)
	if err != nil {
		t.Fatalf("wait for %s: %v", enq.ID, err)
	}
	return st.Result
}
