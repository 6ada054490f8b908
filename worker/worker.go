package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

// Worker is an asynq server running jobs in sandboxes.
type Worker struct {
	cfg      jobs.Config
	srv      *asynq.Server
	webhooks *asynq.Server
	handler  *Handler
	// webhookHandler delivers webhook:deliver tasks.
	webhookHandler *webhook.Handler
	rdb            redis.UniversalClient
	logger         *slog.Logger
	stopListen     context.CancelFunc
	listening      chan struct{}
	// snapshots is the runner with snapshot templates, nil without
	// --snapshots.
	snapshots *executor.SnapshotRunner
}

// New builds a worker; Start runs it. It refuses a config whose image
// is missing, or whose largest job memory limit does not fit the memory
// budget (such a job could never start).
func New(cfg jobs.Config, runner executor.Runner, store *storage.Store, logger *slog.Logger) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.CheckImages(logger); err != nil {
		return nil, err
	}
	if err := cfg.CheckHostCPUs(); err != nil {
		return nil, err
	}
	hostMem, err := jobs.HostMemory()
	if err != nil {
		return nil, err
	}
	budget, err := cfg.Worker.MemoryBudget.Resolve(hostMem, cfg.MaxLimits.Memory)
	if err != nil {
		return nil, err
	}
	rdb, err := cfg.NewRedisClient()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	name := fmt.Sprintf("%s:%d", host, os.Getpid())
	h := &Handler{cfg: cfg, runner: runner, store: store, rdb: rdb, jobs: &running{}, budget: newMemoryBudget(budget), logger: logger, name: name, now: time.Now, sleep: time.Sleep, requeued: make(chan struct{}),
		client: asynq.NewClientFromRedisClient(rdb), insp: asynq.NewInspectorFromRedisClient(rdb)}
	w := &Worker{cfg: cfg, handler: h, rdb: rdb, logger: logger}
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Worker.Concurrency,
		Queues:                   cfg.Worker.Queues,
		TaskCheckInterval:        cfg.Worker.TaskCheckInterval,
		DelayedTaskCheckInterval: time.Second,
		// Shutdown kills running sandboxes after ShutdownGrace itself; by
		// the time asynq's own shutdown starts, the interrupted handlers
		// only wait to be requeued, which asynq does after this timeout.
		ShutdownTimeout: time.Second,
		RetryDelayFunc:  retryDelay,
		// A job handed back for want of memory has not had an attempt; one
		// handed back to queue its webhook has had it already.
		IsFailure: func(err error) bool { return !errors.Is(err, errMemoryBusy) && !errors.Is(err, errWebhookPending) },
		Logger:    slogAdapter{logger.With("component", "asynq")},
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			id, _ := asynq.GetTaskID(ctx)
			logger.Warn("task attempt failed", "job_id", id, "type", t.Type(), "err", err)
		}),
		HealthCheckFunc: func(err error) {
			if err != nil {
				logger.Error("redis health check", "err", err)
			}
		},
	})
	h.metrics = NewMetrics(h.insp)
	h.metrics.workerGauges(h.jobs.count, cfg.Worker.Concurrency)
	h.metrics.memoryGauges(h.budget)
	if n := cfg.Worker.WarmSandboxes; n > 0 {
		if h.warm, err = h.newWarmRunner(n); err != nil {
			rdb.Close()
			return nil, err
		}
		h.metrics.warmGauges(h.warm)
		h.runner = h.warm
	}
	if cfg.Worker.Snapshots {
		// Templates are made before the worker takes jobs: seconds per
		// image, once per image, runsc and preload list (they are kept
		// beside the image).
		snap, err := h.newSnapshotRunner(context.Background())
		if err != nil {
			rdb.Close()
			return nil, err
		}
		w.snapshots = snap
		h.metrics.snapshotGauges(snap)
		h.runner = snap
	}
	// Deliveries have their own server and queue, so that jobs and events
	// fail independently and long jobs never hold up an event.
	w.webhooks, w.webhookHandler = newWebhookServer(cfg, rdb, h.insp, h.metrics, logger)
	return w, nil
}

// retryDelay backs off exponentially with jitter, from about 1s to 5m; a job
// handed back for want of memory, or to queue its webhook, comes back after
// 1-2s.
func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, errMemoryBusy) || errors.Is(err, errWebhookPending) {
		// Soon, and spread: room (or Redis) may come back any moment.
		return time.Second + time.Duration(rand.Int64N(int64(time.Second)))
	}
	d := time.Second << min(n, 9)
	d = min(d, 5*time.Minute)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Mux is the task router with its middleware: panic recovery and logging.
func (w *Worker) Mux() *asynq.ServeMux {
	mux := asynq.NewServeMux()
	mux.Use(recoverMiddleware(w.logger), logMiddleware(w.logger))
	mux.Handle(jobs.TypeRun, w.handler)
	return mux
}

// Start begins processing jobs. It refuses a Redis that may evict keys
// (CheckRedisEviction).
func (w *Worker) Start(ctx context.Context) (err error) {
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%s: %w", w.cfg.RedisDescription(), err)
	}
	if err := jobs.CheckRedisEviction(ctx, w.rdb); err != nil {
		return fmt.Errorf("%s: %w", w.cfg.RedisDescription(), err)
	}
	// Job files outlive neither the job's retention nor its links by more
	// than a day. The rule is checked, and set only when missing or
	// shorter: with least-privilege credentials `sandq s3 setup` set it.
	days := w.cfg.ObjectExpiryDays()
	set, err := w.handler.store.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, days)
	if err != nil {
		return fmt.Errorf("object store at %s: %w", w.cfg.Storage.Endpoint, err)
	}
	if set {
		w.logger.Info("set the expiry rule of job files", "prefix", storage.ObjectPrefix, "days", days)
	}
	if err := w.cfg.Egress.Publish(ctx, w.rdb, w.cfg.Worker.Queues, w.logger); err != nil {
		return fmt.Errorf("publish the network policy: %w", err)
	}
	if err := w.cfg.PublishImages(ctx, w.rdb); err != nil {
		return err
	}
	// What is started is stopped again, last first, if a later step fails.
	var started cleanup.Stack
	defer started.ReleaseOnError(ctx, &err)
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stopListen = cancel
	w.listening = make(chan struct{})
	go func() {
		defer close(w.listening)
		listenCancels(lctx, w.rdb, w.handler.jobs, w.logger)
	}()
	started.Add("cancel listener", func(context.Context) error {
		cancel()
		<-w.listening
		w.stopListen = nil
		return nil
	})
	if err := w.cfg.Webhook.Publish(ctx, w.rdb, w.cfg.Worker.Queues); err != nil {
		return fmt.Errorf("publish the webhook policy: %w", err)
	}
	if w.handler.warm != nil {
		w.handler.warm.Start()
		started.Add("warm sandboxes", func(context.Context) error { w.closeWarm(); return nil })
	}
	if n := w.cfg.Worker.SnapshotPool; n > 0 && w.snapshots != nil {
		if err := w.snapshots.StartPools(w.handler.sandboxLimits(w.cfg.DefaultLimits), n); err != nil {
			return fmt.Errorf("--snapshot-pool: %w", err)
		}
		started.Add("snapshot pools", func(context.Context) error { w.closeSnapshots(); return nil })
	}
	if err := w.srv.Start(w.Mux()); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	started.Add("job server", func(context.Context) error { w.srv.Shutdown(); return nil })
	wmux := asynq.NewServeMux()
	wmux.Use(recoverMiddleware(w.logger))
	wmux.Handle(webhook.TaskType, w.webhookHandler)
	if err := w.webhooks.Start(wmux); err != nil {
		return fmt.Errorf("start webhook deliveries: %w", err)
	}
	w.logger.Info("worker started", "concurrency", w.cfg.Worker.Concurrency, "queues", w.cfg.Worker.Queues, "image", w.cfg.ImagePath(),
		"memory_budget", jobs.FormatSize(w.handler.budget.total))
	return nil
}

// Metrics are this worker's Prometheus metrics.
func (w *Worker) Metrics() *Metrics { return w.handler.metrics }

// WarmReady is how many warm sandboxes wait for a job (0 without
// --warm-sandboxes).
func (w *Worker) WarmReady() int {
	if w.handler.warm == nil {
		return 0
	}
	return w.handler.warm.Ready()
}

// SnapshotTemplates are the snapshot templates jobs start from now (none
// without --snapshots).
func (w *Worker) SnapshotTemplates() []*executor.Template {
	if w.snapshots == nil {
		return nil
	}
	return w.snapshots.Templates()
}

// Running is how many jobs this worker runs now.
func (w *Worker) Running() int { return w.handler.jobs.count() }

// Shutdown stops taking jobs and lets running ones finish for
// ShutdownGrace. Then it kills the sandboxes of those still running, waits
// until every one is gone, and only then lets asynq requeue their tasks,
// unchanged (the attempt is not counted): a job never has two sandboxes.
func (w *Worker) Shutdown() {
	w.srv.Stop()
	w.closeWarm()
	w.closeSnapshots()
	w.waitIdle(w.cfg.Worker.ShutdownGrace)
	if n := w.handler.jobs.cancelAll(errShutdown); n > 0 {
		w.logger.Warn("grace period over: killing running sandboxes", "jobs", n)
		if !w.waitIdle(2 * time.Minute) {
			w.logger.Error("sandboxes still being killed after 2m; requeueing anyway", "jobs", w.handler.jobs.count())
		}
	}
	w.srv.Shutdown()
	close(w.handler.requeued)
	// Sandboxes of jobs that finished are being torn down still.
	w.handler.tearing.Wait()
	w.webhooks.Shutdown()
	if w.stopListen != nil {
		w.stopListen()
		<-w.listening
	}
	w.rdb.Close()
	w.logger.Info("worker stopped")
}

// closeWarm releases the warm sandboxes no job took.
func (w *Worker) closeWarm() {
	if w.handler.warm == nil {
		return
	}
	if err := w.handler.warm.Close(context.Background()); err != nil {
		w.logger.Error("releasing warm sandboxes", "err", err)
	}
}

// closeSnapshots releases the restored sandboxes no job took.
func (w *Worker) closeSnapshots() {
	if w.snapshots == nil {
		return
	}
	if err := w.snapshots.Close(context.Background()); err != nil {
		w.logger.Error("releasing restored sandboxes", "err", err)
	}
}

// SnapshotPoolReady is how many restored sandboxes wait for a job (0
// without --snapshot-pool).
func (w *Worker) SnapshotPoolReady() int {
	if w.snapshots == nil {
		return 0
	}
	ready, _, _ := w.snapshots.PoolStats()
	return ready
}

// waitIdle waits up to d for no job to be running; it reports whether none is.
func (w *Worker) waitIdle(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for w.handler.jobs.count() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func logMiddleware(logger *slog.Logger) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			id, _ := asynq.GetTaskID(ctx)
			q, _ := asynq.GetQueueName(ctx)
			n, _ := asynq.GetRetryCount(ctx)
			start := time.Now()
			logger.Info("task started", "job_id", id, "queue", q, "type", t.Type(), "attempt", n+1)
			err := next.ProcessTask(ctx, t)
			logger.Info("task done", "job_id", id, "queue", q, "type", t.Type(), "attempt", n+1, "ms", time.Since(start).Milliseconds(), "err", err)
			return err
		})
	}
}

func recoverMiddleware(logger *slog.Logger) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) (err error) {
			defer func() {
				if r := recover(); r != nil {
					id, _ := asynq.GetTaskID(ctx)
					logger.Error("handler panic", "job_id", id, "panic", r, "stack", string(debug.Stack()))
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return next.ProcessTask(ctx, t)
		})
	}
}

// slogAdapter makes asynq log through slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAdapter) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a slogAdapter) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a slogAdapter) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a slogAdapter) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }
