package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs/webhook"
)

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
		c.Queue = WebhookQueue
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = webhook.DefaultGiveUpAfter
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultWebhookConcurrency
	}
	if c.HostConcurrency == 0 {
		c.HostConcurrency = max(1, c.Concurrency/4)
	}
	if c.TenantConcurrency == 0 {
		c.TenantConcurrency = max(1, c.Concurrency/4)
	}
	if c.Timeout == 0 {
		c.Timeout = webhook.DefaultTimeout
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
		if len(c.SecretsFor(q, "")) == 0 {
			return fmt.Errorf("webhook default of %s: no secret to sign it with (add secrets for %s or \"*\")", q, q)
		}
	}
	switch {
	case c.MaxAttempts < 1:
		return errors.New("webhook max_attempts must be at least 1")
	case c.Timeout <= 0 || c.Timeout > webhook.MaxTimeout:
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

// SecretsFor are the secrets that sign a job's deliveries: its tenant's
// only, when it has a tenant; its queue's otherwise.
func (c WebhookConfig) SecretsFor(queue, tenant string) []string {
	if tenant != "" {
		return c.TenantSecrets[tenant]
	}
	if s, ok := c.Secrets[queue]; ok {
		return s
	}
	return c.Secrets["*"]
}

// RetrySchedule is the wait between delivery attempts.
func (c WebhookConfig) RetrySchedule() webhook.Schedule {
	s := webhook.DefaultSchedule()
	s.Delays = c.Schedule
	return s
}

// publishedWebhook is one queue's entry in keys.WebhookPolicy: what
// producers need to check webhook URLs.
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

// Publish records, for each queue the worker serves, what producers need
// to check a job's webhook URL.
func (c WebhookConfig) Publish(ctx context.Context, rdb redis.UniversalClient, queues map[string]int) error {
	tenants := slices.Sorted(maps.Keys(c.TenantSecrets))
	for q := range queues {
		b, _ := json.Marshal(publishedWebhook{AllowPrivate: c.AllowPrivate, HasSecret: len(c.SecretsFor(q, "")) > 0, TenantSecrets: tenants, HasDefault: c.Defaults[q] != ""})
		if err := rdb.HSet(ctx, keys.WebhookPolicy, q, b).Err(); err != nil {
			return err
		}
	}
	return nil
}

// webhookPolicy is what a queue's workers published about webhooks; the
// zero value (no worker published) allows no private URLs and no secrets.
func (c *Client) webhookPolicy(ctx context.Context, queue string) publishedWebhook {
	var p publishedWebhook
	if b, err := c.rdb.HGet(ctx, keys.WebhookPolicy, queue).Bytes(); err == nil {
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
	b, err := c.rdb.HGet(ctx, keys.WebhookPolicy, queue).Bytes()
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

// WebhookRef is the webhook of a job, in its result document.
type WebhookRef struct {
	URL string `json:"url"`
	// ID is the webhook-id every delivery attempt carries.
	ID string `json:"id"`
}

func (c *Client) webhookStatus(ctx context.Context, res *Result) *webhook.Status {
	if res == nil || res.Webhook == nil {
		return nil
	}
	return webhook.ReadStatus(ctx, c.insp, c.rdb, c.cfg.Webhook.Queue, res.ID, res.Webhook.URL, res.Webhook.ID)
}
