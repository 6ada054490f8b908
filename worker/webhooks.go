package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// enqueueWebhook queues the delivery of a finished job's result (one per
// job, however often it finishes).
func (h *Handler) enqueueWebhook(ctx context.Context, res *jobs.Result) error {
	if res.Webhook == nil {
		return nil
	}
	wc := h.cfg.Webhook
	return webhook.Enqueue(ctx, h.client,
		webhook.Payload{JobID: res.ID, Queue: res.Queue, URL: res.Webhook.URL, EventID: res.Webhook.ID},
		webhook.TaskOptions{Queue: wc.Queue, MaxAttempts: wc.MaxAttempts, Timeout: wc.Timeout, Retention: h.cfg.ResultRetention})
}

// webhookRef is the webhook a job's result goes to: its own or its
// queue's default.
func (h *Handler) webhookRef(job *jobs.Job) *jobs.WebhookRef {
	u := job.Webhook
	if u == "" {
		u = h.cfg.Webhook.Defaults[job.Queue]
	}
	if u == "" {
		return nil
	}
	return &jobs.WebhookRef{URL: u, ID: webhook.EventID(job.ID)}
}

// newWebhookServer builds a worker's delivery server, on its own queue and
// with its own concurrency, and its handler.
func newWebhookServer(cfg jobs.Config, rdb redis.UniversalClient, insp *asynq.Inspector, metrics *Metrics, logger *slog.Logger) (*asynq.Server, *webhook.Handler) {
	wc := cfg.Webhook
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:       wc.Concurrency,
		Queues:            map[string]int{wc.Queue: 1},
		TaskCheckInterval: cfg.Worker.TaskCheckInterval,
		// Retries wait in asynq's retry set; check it every second, not
		// every 5s, so short retry delays are kept.
		DelayedTaskCheckInterval: time.Second,
		ShutdownTimeout:          wc.Timeout + 5*time.Second,
		RetryDelayFunc:           webhook.RetryDelay(wc.RetrySchedule()),
		// A delivery put back for want of a slot has not been attempted.
		IsFailure: func(err error) bool { return !errors.Is(err, webhook.ErrPostponed) },
		Logger:    slogAdapter{logger.With("component", "asynq-webhooks")},
	})
	h := webhook.NewHandler(webhook.HandlerConfig{
		Redis: rdb, Inspector: insp, Logger: logger,
		Secrets: wc.SecretsFor, Owner: jobs.OwnerOf, Observe: metrics.delivery,
		Retention: cfg.ResultRetention, MaxAttempts: wc.MaxAttempts,
		HostConcurrency: wc.HostConcurrency, TenantConcurrency: wc.TenantConcurrency,
		Deliverer: &webhook.Deliverer{Guard: webhook.Guard{AllowPrivate: wc.AllowPrivate}, Timeout: wc.Timeout},
	})
	return srv, h
}
