package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
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
	// Secrets sign deliveries of jobs without a tenant (direct producers,
	// who hold Redis credentials): by job queue, "*" for every queue.
	// Several secrets (rotation) give several signatures.
	Secrets map[string][]string `json:"secrets,omitempty"`
	// TenantSecrets sign deliveries of a tenant's jobs (API submissions),
	// by tenant name. A tenant's job is signed with its tenant's secrets
	// only, never with queue secrets, so that no other producer of the
	// queue can forge its events; a tenant's job asking for a webhook is
	// refused at enqueue when its tenant has none. A key may belong to one
	// tenant only, and to no queue. Several secrets (rotation) give several
	// signatures.
	TenantSecrets map[string][]string `json:"tenant_secrets,omitempty"`
	// Defaults are webhook URLs for jobs of a queue that name none. A
	// tenant's job sends its default webhook signed with the tenant's
	// secrets; when the tenant has none, it is not sent, and its delivery
	// log says why.
	Defaults map[string]string `json:"defaults,omitempty"`
	// AllowPrivate turns the SSRF guard off: URLs resolving to loopback,
	// private, link-local or CGNAT addresses are accepted. For development
	// and tests only.
	AllowPrivate bool `json:"allow_private,omitempty"`
	// MaxAttempts is the number of attempts before a delivery is archived.
	// Default 8.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Concurrency of deliveries per worker: they are I/O-bound, mostly
	// waiting on receivers. Default 16.
	Concurrency int `json:"concurrency,omitempty"`
	// HostConcurrency caps a worker's deliveries in progress at once to
	// one receiver host, so that a receiver that hangs holds at most this
	// many of the Concurrency slots. A delivery over it goes back to the
	// queue for 1-3s, without counting as an attempt. Default a quarter of
	// Concurrency (at least 1); at most Concurrency.
	HostConcurrency int `json:"host_concurrency,omitempty"`
	// TenantConcurrency caps a worker's deliveries in progress at once of
	// one tenant's jobs, so that a tenant's many receivers cannot take
	// every slot either; jobs without a tenant are held by HostConcurrency
	// only. As HostConcurrency otherwise. Default a quarter of Concurrency
	// (at least 1); at most Concurrency.
	TenantConcurrency int `json:"tenant_concurrency,omitempty"`
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
		c.Concurrency = 16
	}
	if c.HostConcurrency == 0 {
		c.HostConcurrency = max(1, c.Concurrency/4)
	}
	if c.TenantConcurrency == 0 {
		c.TenantConcurrency = max(1, c.Concurrency/4)
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
	if err := c.validateTenantSecrets(); err != nil {
		return err
	}
	guard := webhook.Guard{AllowPrivate: c.AllowPrivate}
	for q, u := range c.Defaults {
		if err := guard.CheckURL(context.Background(), nil, u); err != nil {
			return fmt.Errorf("webhook default of %s: %w", q, err)
		}
		if len(c.secretsFor(q, "")) == 0 {
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
	case c.HostConcurrency < 1 || c.HostConcurrency > c.Concurrency:
		return fmt.Errorf("webhook host_concurrency %d must be between 1 and concurrency (%d)", c.HostConcurrency, c.Concurrency)
	case c.TenantConcurrency < 1 || c.TenantConcurrency > c.Concurrency:
		return fmt.Errorf("webhook tenant_concurrency %d must be between 1 and concurrency (%d)", c.TenantConcurrency, c.Concurrency)
	}
	return nil
}

// validateTenantSecrets checks tenant names and secrets, and that no key
// is shared: a key that signs another tenant's or a queue's events would
// let that party forge this tenant's. Errors never contain a secret.
func (c WebhookConfig) validateTenantSecrets() error {
	type owner struct{ what, secret string }
	var owners []owner
	for q, secrets := range c.Secrets {
		for _, s := range secrets {
			owners = append(owners, owner{fmt.Sprintf("queue %s", q), s})
		}
	}
	tenants := slices.Sorted(maps.Keys(c.TenantSecrets))
	for _, t := range tenants {
		secrets := c.TenantSecrets[t]
		if !queueName.MatchString(t) {
			return fmt.Errorf("webhook tenant_secrets: %q is not a valid tenant name (letters, digits, _ . -, at most 64)", t)
		}
		if len(secrets) == 0 {
			return fmt.Errorf("webhook tenant_secrets of %s: an empty list (leave the tenant out: its jobs then get no webhooks)", t)
		}
		for i, s := range secrets {
			if err := webhook.ParseSecret(s); err != nil {
				return fmt.Errorf("webhook tenant_secrets of %s: secret %d: %w", t, i+1, err)
			}
			for _, o := range owners {
				if o.what != "tenant "+t && webhook.SameKey(s, o.secret) {
					return fmt.Errorf("webhook tenant_secrets of %s: secret %d is also a secret of %s; each tenant needs a key of its own (sandq webhook secret makes one)", t, i+1, o.what)
				}
			}
		}
		for _, s := range secrets {
			owners = append(owners, owner{"tenant " + t, s})
		}
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

// secretsFor are the secrets that sign a job's deliveries: its tenant's
// only, when it has a tenant; its queue's otherwise.
func (c WebhookConfig) secretsFor(queue, tenant string) []string {
	if tenant != "" {
		return c.TenantSecrets[tenant]
	}
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
	// HasSecret: the queue's workers can sign jobs without a tenant;
	// without a secret such a job's webhook is refused at enqueue.
	HasSecret bool `json:"has_secret"`
	// TenantSecrets names (never the secrets) the tenants whose jobs the
	// queue's workers can sign; a webhook of another tenant's job is
	// refused at enqueue.
	TenantSecrets []string `json:"tenant_secrets,omitempty"`
	// HasDefault: jobs of the queue get a webhook even without a URL.
	HasDefault bool `json:"has_default"`
}

func (c WebhookConfig) publish(ctx context.Context, rdb redis.UniversalClient, queues map[string]int) error {
	tenants := slices.Sorted(maps.Keys(c.TenantSecrets))
	for q := range queues {
		b, _ := json.Marshal(publishedWebhook{AllowPrivate: c.AllowPrivate, HasSecret: len(c.secretsFor(q, "")) > 0, TenantSecrets: tenants, HasDefault: c.Defaults[q] != ""})
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

// checkWebhook refuses a malformed webhook URL, one whose host resolves to
// an address the queue's workers do not deliver to, and one the workers
// could not sign: a tenant's job (tenant not empty) needs a secret of its
// tenant, a job without a tenant a secret of its queue.
func (c *Client) checkWebhook(ctx context.Context, queue, tenant, raw string) error {
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
	if tenant != "" {
		if !slices.Contains(p.TenantSecrets, tenant) {
			return &FieldError{Field: "webhook", Msg: fmt.Sprintf("tenant %q has no webhook signing secret on the workers of queue %q: a tenant's webhooks are signed with its own secret only; ask the operator to add one under tenant_secrets", tenant, queue)}
		}
		return nil
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
	// MaxRetry is one more than the attempts: the handler gives up after
	// MaxAttempts itself, so that a delivery put back for want of a slot
	// on what would be its last try is not archived by asynq.
	_, err := h.client.EnqueueContext(ctx, asynq.NewTask(TypeWebhook, b),
		asynq.TaskID(webhookTaskID(res.ID)), asynq.Queue(wc.Queue), asynq.MaxRetry(wc.MaxAttempts),
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
	slots     *deliverySlots
}

// newWebhookServer builds a worker's delivery server, on its own queue and
// with its own concurrency, and its handler.
func newWebhookServer(cfg Config, rdb redis.UniversalClient, insp *asynq.Inspector, metrics *Metrics, logger *slog.Logger) (*asynq.Server, *WebhookHandler) {
	wc := cfg.Webhook
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:       wc.Concurrency,
		Queues:            map[string]int{wc.Queue: 1},
		TaskCheckInterval: cfg.Worker.TaskCheckInterval,
		// Retries wait in asynq's retry set; check it every second, not
		// every 5s, so short retry delays are kept.
		DelayedTaskCheckInterval: time.Second,
		ShutdownTimeout:          wc.Timeout + 5*time.Second,
		RetryDelayFunc:           webhookRetryDelay(wc.schedule()),
		// A delivery put back for want of a slot has not been attempted.
		IsFailure: func(err error) bool { return !errors.Is(err, errDeliveryPostponed) },
		Logger:    slogAdapter{logger.With("component", "asynq-webhooks")},
	})
	h := &WebhookHandler{cfg: cfg, insp: insp, rdb: rdb, logger: logger, metrics: metrics,
		deliverer: &webhook.Deliverer{Guard: webhook.Guard{AllowPrivate: wc.AllowPrivate}, Timeout: wc.Timeout},
		slots:     newDeliverySlots(wc.HostConcurrency, wc.TenantConcurrency)}
	return srv, h
}

// errDeliveryPostponed: the delivery's receiver host or tenant has all its
// slots on this worker taken; the task goes back to the queue for a short
// while, and the attempt does not count.
var errDeliveryPostponed = errors.New("webhook delivery postponed")

// deliverySlots counts a worker's deliveries in progress by receiver host
// and by tenant, against their caps.
type deliverySlots struct {
	mu                 sync.Mutex
	maxHost, maxTenant int
	host, tenant       map[string]int
}

func newDeliverySlots(maxHost, maxTenant int) *deliverySlots {
	return &deliverySlots{maxHost: maxHost, maxTenant: maxTenant, host: map[string]int{}, tenant: map[string]int{}}
}

// acquire takes a slot for a delivery to host of tenant's job, and returns
// its release; or, when either is at its cap and force is not set, says
// which (busy) and takes nothing. Jobs without a tenant (producers with
// Redis access, trusted) are held only by the per-host cap.
func (s *deliverySlots) acquire(host, tenant string, force bool) (release func(), busy string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !force {
		switch {
		case s.host[host] >= s.maxHost:
			return nil, fmt.Sprintf("%d deliveries to receiver host %s are in progress on this worker (host_concurrency)", s.host[host], host)
		case tenant != "" && s.tenant[tenant] >= s.maxTenant:
			return nil, fmt.Sprintf("%d deliveries of the tenant's jobs are in progress on this worker (tenant_concurrency)", s.tenant[tenant])
		}
	}
	s.host[host]++
	s.tenant[tenant]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		decrement(s.host, host)
		decrement(s.tenant, tenant)
	}, ""
}

func decrement(m map[string]int, k string) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

// receiverHost is the host a delivery goes to, as the per-host cap counts
// it: lower case, without a trailing dot or the port.
func receiverHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
}

// retryAfterError carries a receiver's Retry-After to the retry schedule.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// ProcessTask makes one delivery attempt and records it in the job's
// delivery log. A delivery whose receiver host or tenant has no free slot
// on this worker goes back to the queue unattempted (errDeliveryPostponed).
// The job's deliveries are signed with its tenant's secrets when it has a
// tenant, with its queue's otherwise; the tenant is read from the job's own
// task, not from the delivery's payload.
func (w *WebhookHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p webhookPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("webhook payload: %w: %w", err, asynq.SkipRetry)
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	logger := w.logger.With("job_id", p.JobID, "queue", p.Queue, "webhook_id", p.EventID, "attempt", retried+1)
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
	tenant, ok := ownerOf(info.Payload)
	if !ok {
		w.log(ctx, p.JobID, webhook.Attempt{Time: time.Now().UTC(), Outcome: webhook.OutcomeFailed, Error: "the job's payload cannot be read, so neither can its tenant; not sent"})
		return fmt.Errorf("job %s: its payload is not a job's: %w", p.JobID, asynq.SkipRetry)
	}
	if tenant != "" {
		logger = logger.With("tenant", tenant)
	}
	// asynq archives a task handed back on its last try, failure or not:
	// such a one (queued before the caps existed) goes over the caps.
	release, busy := w.slots.acquire(receiverHost(p.URL), tenant, retried >= maxRetry)
	if busy != "" {
		logger.Debug("webhook delivery postponed", "reason", busy)
		return fmt.Errorf("%w: %s", errDeliveryPostponed, busy)
	}
	defer release()
	var a webhook.Attempt
	switch secrets := w.cfg.Webhook.secretsFor(p.Queue, tenant); {
	case len(secrets) > 0:
		a = w.deliverer.Deliver(ctx, p.URL, secrets, p.EventID, info.Result)
	case tenant != "":
		a = webhook.Attempt{Time: time.Now().UTC(), Outcome: webhook.OutcomeFailed,
			Error: fmt.Sprintf("not sent: tenant %s has no webhook signing secret on this worker, and a tenant's webhooks are signed with its own secret only (tenant_secrets); the delivery can be retried once one is configured", tenant)}
	default:
		a = webhook.Attempt{Time: time.Now().UTC(), Outcome: webhook.OutcomeFailed, Error: fmt.Sprintf("no webhook secret is configured for queue %s", p.Queue)}
	}
	w.log(ctx, p.JobID, a)
	w.metrics.delivery(a.Outcome)
	logger.Info("webhook attempt", "outcome", a.Outcome, "status_code", a.StatusCode, "err", a.Error, "detail", a.Detail, "duration_ms", a.DurationMS)
	msg := a.Error
	if msg == "" {
		msg = fmt.Sprintf("HTTP %d", a.StatusCode)
	}
	switch a.Outcome {
	case webhook.OutcomeDelivered:
		return nil
	case webhook.OutcomeRetry:
		if n := w.cfg.Webhook.MaxAttempts; retried+1 >= n {
			return fmt.Errorf("webhook delivery gave up after %d attempts: %s: %w", n, msg, asynq.SkipRetry)
		}
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
	case info.State == asynq.TaskStateRetry && info.Retried > 0:
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
		if errors.Is(err, errDeliveryPostponed) {
			// Soon, and spread: a slot frees as soon as a delivery ends.
			return time.Second + rand.N(2*time.Second)
		}
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
