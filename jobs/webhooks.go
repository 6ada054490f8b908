package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs/webhook"
)

// TypeWebhook is the asynq task type of a completion webhook delivery.
const TypeWebhook = "webhook:deliver"

// WebhookConfig is the operator's webhook settings.
type WebhookConfig struct {
	// Queue is the asynq queue deliveries wait in: "webhooks". Producers
	// look deliveries up there, so it is not configurable in the file.
	Queue string `json:"-"`
	// Secrets sign deliveries: by job queue, "*" for every queue. Several
	// secrets (rotation) give several signatures.
	Secrets map[string][]string `json:"secrets,omitempty"`
	// Defaults are webhook URLs for jobs of a queue that name none.
	Defaults map[string]string `json:"defaults,omitempty"`
	// AllowPrivate turns the SSRF guard off: URLs resolving to loopback,
	// private, link-local or CGNAT addresses are accepted. For development
	// and tests only.
	AllowPrivate bool `json:"allow_private,omitempty"`
	// MaxAttempts is the number of attempts before a delivery is archived.
	// Default 8.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Concurrency of deliveries per worker. Default 4.
	Concurrency int `json:"concurrency,omitempty"`
	// Timeout of one request, at most 15s. Default 15s.
	Timeout time.Duration `json:"-"`
	// Schedule is the wait before each retry. Default 5s, 5m, 30m, 2h, 5h,
	// 10h (then 10h).
	Schedule []time.Duration `json:"-"`
}

// WithDefaults fills unset fields.
func (c WebhookConfig) WithDefaults() WebhookConfig {
	if c.Queue == "" {
		c.Queue = "webhooks"
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 8
	}
	if c.Concurrency == 0 {
		c.Concurrency = 4
	}
	if c.Timeout == 0 {
		c.Timeout = 15 * time.Second
	}
	if len(c.Schedule) == 0 {
		c.Schedule = webhook.DefaultSchedule().Delays
	}
	return c
}

// Validate checks secrets, URLs and bounds.
func (c WebhookConfig) Validate() error {
	if err := CheckQueue(c.Queue); err != nil {
		return fmt.Errorf("webhook queue: %w", err)
	}
	for q, secrets := range c.Secrets {
		if len(secrets) == 0 {
			return fmt.Errorf("webhook secrets of %s: an empty list (leave the queue out to use \"*\")", q)
		}
		for _, s := range secrets {
			if err := webhook.ParseSecret(s); err != nil {
				return fmt.Errorf("webhook secrets of %s: %w", q, err)
			}
		}
	}
	guard := webhook.Guard{AllowPrivate: c.AllowPrivate}
	for q, u := range c.Defaults {
		if err := guard.CheckURL(context.Background(), nil, u); err != nil {
			return fmt.Errorf("webhook default of %s: %w", q, err)
		}
		if len(c.secretsFor(q)) == 0 {
			return fmt.Errorf("webhook default of %s: no secret to sign it with (add secrets for %s or \"*\")", q, q)
		}
	}
	switch {
	case c.MaxAttempts < 1:
		return errors.New("webhook max_attempts must be at least 1")
	case c.Timeout <= 0 || c.Timeout > 15*time.Second:
		return errors.New("webhook timeout must be between 1ms and 15s")
	case c.Concurrency < 1:
		return errors.New("webhook concurrency must be at least 1")
	}
	return nil
}

// LoadWebhookConfig reads a JSON webhook settings file; "timeout" and
// "schedule" are durations like "15s" and ["5s", "5m"].
func LoadWebhookConfig(path string) (WebhookConfig, error) {
	var f struct {
		WebhookConfig
		Timeout  string   `json:"timeout"`
		Schedule []string `json:"schedule"`
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return WebhookConfig{}, fmt.Errorf("webhook config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return WebhookConfig{}, fmt.Errorf("webhook config %s: %w", path, err)
	}
	c := f.WebhookConfig
	if f.Timeout != "" {
		if c.Timeout, err = time.ParseDuration(f.Timeout); err != nil {
			return WebhookConfig{}, fmt.Errorf("webhook config %s: timeout: %w", path, err)
		}
	}
	for _, s := range f.Schedule {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return WebhookConfig{}, fmt.Errorf("webhook config %s: schedule: %q is not a duration", path, s)
		}
		c.Schedule = append(c.Schedule, d)
	}
	return c, nil
}

func (c WebhookConfig) secretsFor(queue string) []string {
	if s, ok := c.Secrets[queue]; ok {
		return s
	}
	return c.Secrets["*"]
}

func (c WebhookConfig) schedule() webhook.Schedule {
	s := webhook.DefaultSchedule()
	s.Delays = c.Schedule
	return s
}

// webhookPolicyKey is a Redis hash: per job queue, what producers need to
// check webhook URLs (whether private addresses are allowed).
const webhookPolicyKey = "sandq:webhooks"

type publishedWebhook struct {
	AllowPrivate bool `json:"allow_private"`
	// HasSecret: the queue's workers can sign; without a secret a webhook
	// is refused at enqueue.
	HasSecret bool `json:"has_secret"`
	// HasDefault: jobs of the queue get a webhook even without a URL.
	HasDefault bool `json:"has_default"`
}

func (c WebhookConfig) publish(ctx context.Context, rdb redis.UniversalClient, queues map[string]int) error {
	for q := range queues {
		b, _ := json.Marshal(publishedWebhook{AllowPrivate: c.AllowPrivate, HasSecret: len(c.secretsFor(q)) > 0, HasDefault: c.Defaults[q] != ""})
		if err := rdb.HSet(ctx, webhookPolicyKey, q, b).Err(); err != nil {
			return err
		}
	}
	return nil
}

// webhookPolicy is what a queue's workers published about webhooks; the
// zero value (no worker published) allows no private URLs and no secrets.
func (c *Client) webhookPolicy(ctx context.Context, queue string) publishedWebhook {
	var p publishedWebhook
	if b, err := c.rdb.HGet(ctx, webhookPolicyKey, queue).Bytes(); err == nil {
		json.Unmarshal(b, &p)
	}
	return p
}

// checkWebhook refuses a malformed webhook URL, or one whose host resolves
// to an address the queue's workers do not deliver to.
func (c *Client) checkWebhook(ctx context.Context, queue, raw string) error {
	if raw == "" {
		return nil
	}
	var p publishedWebhook
	b, err := c.rdb.HGet(ctx, webhookPolicyKey, queue).Bytes()
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("webhook policy of queue %s: %w", queue, err)
		}
	case !errors.Is(err, redis.Nil):
		return fmt.Errorf("read the webhook policy of queue %s: %w", queue, err)
	}
	if len(raw) > 2048 {
		return &FieldError{Field: "webhook", Msg: "URL longer than 2048 bytes"}
	}
	if err := (webhook.Guard{AllowPrivate: p.AllowPrivate}).CheckURL(ctx, net.DefaultResolver, raw); err != nil {
		return &FieldError{Field: "webhook", Msg: err.Error()}
	}
	if !p.HasSecret {
		return &FieldError{Field: "webhook", Msg: fmt.Sprintf("queue %q has no webhook signing secret configured on its workers", queue)}
	}
	return nil
}

// webhookPayload is a delivery task's payload: the job whose result goes
// to url. The body is read from the job's stored result at each attempt.
type webhookPayload struct {
	JobID string `json:"job_id"`
	Queue string `json:"queue"`
	URL   string `json:"url"`
	// EventID is the webhook-id header, the same on every attempt.
	EventID string `json:"event_id"`
}

// WebhookRef is the webhook of a job, in its result document.
type WebhookRef struct {
	URL string `json:"url"`
	// ID is the webhook-id every delivery attempt carries.
	ID string `json:"id"`
}

func webhookTaskID(jobID string) string  { return "wh-" + jobID }
func webhookEventID(jobID string) string { return "msg_" + jobID }
func webhookLogKey(jobID string) string  { return "sandq:webhook:log:" + jobID }

// enqueueWebhook queues the delivery of a finished job's result. Its task ID
// is derived from the job's, so a job that finishes twice (at-least-once
// execution) still has one delivery.
func (h *Handler) enqueueWebhook(ctx context.Context, res *Result) error {
	if res.Webhook == nil {
		return nil
	}
	b, _ := json.Marshal(webhookPayload{JobID: res.ID, Queue: res.Queue, URL: res.Webhook.URL, EventID: res.Webhook.ID})
	wc := h.cfg.Webhook
	_, err := h.client.EnqueueContext(ctx, asynq.NewTask(TypeWebhook, b),
		asynq.TaskID(webhookTaskID(res.ID)), asynq.Queue(wc.Queue), asynq.MaxRetry(wc.MaxAttempts-1),
		asynq.Timeout(wc.Timeout+30*time.Second), asynq.Retention(h.cfg.ResultRetention))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue the webhook: %w", err)
	}
	return nil
}

// webhookRef is the webhook a job's result goes to: its own or its
// queue's default.
func (h *Handler) webhookRef(job *Job) *WebhookRef {
	u := job.Webhook
	if u == "" {
		u = h.cfg.Webhook.Defaults[job.Queue]
	}
	if u == "" {
		return nil
	}
	return &WebhookRef{URL: u, ID: webhookEventID(job.ID)}
}

// WebhookHandler delivers webhook:deliver tasks.
type WebhookHandler struct {
	cfg       Config
	insp      *asynq.Inspector
	rdb       redis.UniversalClient
	deliverer *webhook.Deliverer
	logger    *slog.Logger
	metrics   *Metrics
}

// retryAfterError carries a receiver's Retry-After to the retry schedule.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// ProcessTask makes one delivery attempt and records it in the job's
// delivery log.
func (w *WebhookHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p webhookPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("webhook payload: %w: %w", err, asynq.SkipRetry)
	}
	logger := w.logger.With("job_id", p.JobID, "queue", p.Queue, "webhook_id", p.EventID)
	info, err := w.insp.GetTaskInfo(p.Queue, p.JobID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		w.log(ctx, p.JobID, webhook.Attempt{Time: time.Now().UTC(), Outcome: webhook.OutcomeFailed, Error: "the job's result is gone (past its retention); nothing to deliver"})
		return fmt.Errorf("job %s has no result any more: %w", p.JobID, asynq.SkipRetry)
	}
	if err != nil {
		return fmt.Errorf("read the result of %s: %w", p.JobID, err)
	}
	if len(info.Result) == 0 {
		return fmt.Errorf("job %s has no result to deliver: %w", p.JobID, asynq.SkipRetry)
	}
	secrets := w.cfg.Webhook.secretsFor(p.Queue)
	var a webhook.Attempt
	if len(secrets) == 0 {
		a = webhook.Attempt{Time: time.Now().UTC(), Outcome: "failed", Error: fmt.Sprintf("no webhook secret is configured for queue %s", p.Queue)}
	} else {
		a = w.deliverer.Deliver(ctx, p.URL, secrets, p.EventID, info.Result)
	}
	w.log(ctx, p.JobID, a)
	w.metrics.delivery(a.Outcome)
	logger.Info("webhook attempt", "outcome", a.Outcome, "status_code", a.StatusCode, "err", a.Error, "duration_ms", a.DurationMS)
	msg := a.Error
	if msg == "" {
		msg = fmt.Sprintf("HTTP %d", a.StatusCode)
	}
	switch a.Outcome {
	case "delivered":
		return nil
	case "retry":
		return &retryAfterError{err: fmt.Errorf("webhook delivery: %s", msg), after: a.RetryAfter}
	default: // failed, gone: no more attempts; archived, retryable by hand
		return fmt.Errorf("webhook delivery %s: %s: %w", a.Outcome, msg, asynq.SkipRetry)
	}
}

// log appends an attempt to the job's delivery log.
func (w *WebhookHandler) log(ctx context.Context, jobID string, a webhook.Attempt) {
	if b, err := json.Marshal(a); err == nil {
		key := webhookLogKey(jobID)
		w.rdb.RPush(context.WithoutCancel(ctx), key, b)
		w.rdb.Expire(context.WithoutCancel(ctx), key, w.cfg.ResultRetention)
	}
}

// WebhookStatus is a job's webhook and its deliveries so far.
type WebhookStatus struct {
	URL string `json:"url"`
	ID  string `json:"id"`
	// State: pending, retry, delivered, failed (archived: given up, or
	// stopped by a 3xx, 4xx or 410; asynqmon can retry it), or unknown
	// (the delivery task could not be read).
	State    string            `json:"state"`
	Attempts []webhook.Attempt `json:"attempts"`
}

func (c *Client) webhookStatus(ctx context.Context, res *Result) *WebhookStatus {
	if res == nil || res.Webhook == nil {
		return nil
	}
	ws := &WebhookStatus{URL: res.Webhook.URL, ID: res.Webhook.ID, Attempts: []webhook.Attempt{}}
	info, err := c.insp.GetTaskInfo(c.cfg.Webhook.Queue, webhookTaskID(res.ID))
	switch {
	case err != nil:
		ws.State = "unknown"
	case info.State == asynq.TaskStateCompleted:
		ws.State = "delivered"
	case info.State == asynq.TaskStateArchived:
		ws.State = "failed"
	case info.State == asynq.TaskStateRetry:
		ws.State = "retry"
	default:
		ws.State = "pending"
	}
	entries, _ := c.rdb.LRange(ctx, webhookLogKey(res.ID), 0, -1).Result()
	for _, e := range entries {
		var a webhook.Attempt
		if json.Unmarshal([]byte(e), &a) == nil {
			ws.Attempts = append(ws.Attempts, a)
		}
	}
	return ws
}

// webhookRetryDelay is the retry schedule of deliveries, honoring a
// receiver's Retry-After.
func webhookRetryDelay(s webhook.Schedule) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		var ra *retryAfterError
		after := time.Duration(0)
		if errors.As(err, &ra) {
			after = ra.after
		}
		d := s.Delay(n+1, after)
		if after > 0 && d <= after+time.Second {
			// asynq schedules retries in whole Unix seconds, so a task may
			// run up to a second before the time asked for; a second more
			// keeps a receiver's Retry-After.
			d = after + time.Second
		}
		return d
	}
}
