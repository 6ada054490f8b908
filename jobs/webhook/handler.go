package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
)

// HandlerConfig is what a worker's delivery handler needs.
type HandlerConfig struct {
	// Redis holds the delivery log; Inspector reads the job's result and
	// payload (the body and the tenant).
	Redis     redis.UniversalClient
	Inspector *asynq.Inspector
	Logger    *slog.Logger
	// Secrets are the secrets that sign a job's deliveries (its tenant's
	// when tenant is set, its queue's otherwise); none: not sent.
	Secrets func(queue, tenant string) []string
	// Owner reads the tenant from a job task's payload; ok is false for a
	// payload that is not a job's.
	Owner func(payload []byte) (tenant string, ok bool)
	// Observe counts each attempt's outcome (metrics); may be nil.
	Observe func(outcome string)
	// Retention of the delivery log: the job's result retention.
	Retention time.Duration
	// MaxAttempts before a delivery gives up.
	MaxAttempts int
	// HostConcurrency and TenantConcurrency cap deliveries in progress to
	// one receiver host and of one tenant's jobs.
	HostConcurrency, TenantConcurrency int
	// Deliverer makes the attempts.
	Deliverer *Deliverer
}

// Handler delivers webhook:deliver tasks.
type Handler struct {
	cfg   HandlerConfig
	slots *slots
	now   func() time.Time
}

// NewHandler returns a delivery handler.
func NewHandler(cfg HandlerConfig) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg, slots: newSlots(cfg.HostConcurrency, cfg.TenantConcurrency), now: time.Now}
}

var _ asynq.Handler = (*Handler)(nil)

// ErrPostponed: the delivery's receiver host or tenant has all its slots
// on this worker taken; the task goes back to the queue for a short while,
// and the attempt does not count (the delivery server's IsFailure).
var ErrPostponed = errors.New("webhook delivery postponed")

// slots counts a worker's deliveries in progress by receiver host and by
// tenant, against their caps.
type slots struct {
	mu                 sync.Mutex
	maxHost, maxTenant int
	host, tenant       map[string]int
}

func newSlots(maxHost, maxTenant int) *slots {
	return &slots{maxHost: maxHost, maxTenant: maxTenant, host: map[string]int{}, tenant: map[string]int{}}
}

// acquire takes a slot for a delivery to host of tenant's job, and returns
// its release; or, when either is at its cap and force is not set, says
// which (busy) and takes nothing. Jobs without a tenant (producers with
// Redis access, trusted) are held only by the per-host cap.
func (s *slots) acquire(host, tenant string, force bool) (release func(), busy string) {
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
// on this worker goes back to the queue unattempted (ErrPostponed). The
// job's deliveries are signed with its tenant's secrets when it has a
// tenant, with its queue's otherwise; the tenant is read from the job's own
// task, not from the delivery's payload.
func (w *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p Payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("webhook payload: %w: %w", err, asynq.SkipRetry)
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	logger := w.cfg.Logger.With("job_id", p.JobID, "queue", p.Queue, "webhook_id", p.EventID, "attempt", retried+1)
	info, err := w.cfg.Inspector.GetTaskInfo(p.Queue, p.JobID)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		w.log(ctx, p.JobID, Attempt{Time: w.now().UTC(), Outcome: OutcomeFailed, Error: "the job's result is gone (past its retention); nothing to deliver"})
		return fmt.Errorf("job %s has no result any more: %w", p.JobID, asynq.SkipRetry)
	}
	if err != nil {
		return fmt.Errorf("read the result of %s: %w", p.JobID, err)
	}
	if len(info.Result) == 0 {
		return fmt.Errorf("job %s has no result to deliver: %w", p.JobID, asynq.SkipRetry)
	}
	tenant, ok := w.cfg.Owner(info.Payload)
	if !ok {
		w.log(ctx, p.JobID, Attempt{Time: w.now().UTC(), Outcome: OutcomeFailed, Error: "the job's payload cannot be read, so neither can its tenant; not sent"})
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
		return fmt.Errorf("%w: %s", ErrPostponed, busy)
	}
	defer release()
	var a Attempt
	switch secrets := w.cfg.Secrets(p.Queue, tenant); {
	case len(secrets) > 0:
		a = w.cfg.Deliverer.Deliver(ctx, p.URL, secrets, p.EventID, info.Result)
	case tenant != "":
		a = Attempt{Time: w.now().UTC(), Outcome: OutcomeFailed,
			Error: fmt.Sprintf("not sent: tenant %s has no webhook signing secret on this worker, and a tenant's webhooks are signed with its own secret only (tenant_secrets); the delivery can be retried once one is configured", tenant)}
	default:
		a = Attempt{Time: w.now().UTC(), Outcome: OutcomeFailed, Error: fmt.Sprintf("no webhook secret is configured for queue %s", p.Queue)}
	}
	w.log(ctx, p.JobID, a)
	if w.cfg.Observe != nil {
		w.cfg.Observe(a.Outcome)
	}
	logger.Info("webhook attempt", "outcome", a.Outcome, "status_code", a.StatusCode, "err", a.Error, "detail", a.Detail, "duration_ms", a.DurationMS)
	msg := a.Error
	if msg == "" {
		msg = fmt.Sprintf("HTTP %d", a.StatusCode)
	}
	switch a.Outcome {
	case OutcomeDelivered:
		return nil
	case OutcomeRetry:
		if n := w.cfg.MaxAttempts; retried+1 >= n {
			return fmt.Errorf("webhook delivery gave up after %d attempts: %s: %w", n, msg, asynq.SkipRetry)
		}
		return &retryAfterError{err: fmt.Errorf("webhook delivery: %s", msg), after: a.RetryAfter}
	default: // failed, gone: no more attempts; archived, retryable by hand
		return fmt.Errorf("webhook delivery %s: %s: %w", a.Outcome, msg, asynq.SkipRetry)
	}
}

// log appends an attempt to the job's delivery log.
func (w *Handler) log(ctx context.Context, jobID string, a Attempt) {
	if b, err := json.Marshal(a); err == nil {
		key := keys.WebhookLog(jobID)
		w.cfg.Redis.RPush(context.WithoutCancel(ctx), key, b)
		w.cfg.Redis.Expire(context.WithoutCancel(ctx), key, w.cfg.Retention)
	}
}

// RetryDelay is the retry schedule of deliveries, honoring a receiver's
// Retry-After; a postponed delivery comes back in 1-3s.
func RetryDelay(s Schedule) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		if errors.Is(err, ErrPostponed) {
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
