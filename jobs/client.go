package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

// ErrJobNotFound is returned for an ID no queue holds.
var ErrJobNotFound = errors.New("job not found")

// ErrJobFinished is returned when cancelling a job that already ended.
var ErrJobFinished = errors.New("job already finished")

// Client is a producer: it submits jobs and follows them.
type Client struct {
	cfg    Config
	store  *storage.Store
	client *asynq.Client
	insp   *asynq.Inspector
	rdb    redis.UniversalClient
	logger *slog.Logger
	now    func() time.Time
	// done hears jobs' completion for Wait (donewatch.go).
	done *doneWatcher
}

// NewClient connects to Redis (lazily) and uses store for files.
func NewClient(cfg Config, store *storage.Store, logger *slog.Logger) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	rdb, err := cfg.NewRedisClient()
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg: cfg, store: store, logger: logger, now: time.Now, rdb: rdb,
		client: asynq.NewClientFromRedisClient(rdb),
		insp:   asynq.NewInspectorFromRedisClient(rdb),
		done:   newDoneWatcher(rdb, logger),
	}, nil
}

// Close ends the subscription to jobs' completion, if Wait or WatchDone
// started it, and releases the Redis connections.
func (c *Client) Close() error {
	c.done.close()
	return c.rdb.Close()
}

// File is a file to upload: a name in the sandbox and its bytes.
type File struct {
	Name string
	Size int64
	Open func() (io.ReadCloser, error)
}

// LocalFile is the file at path, named name in the sandbox (its base name
// when name is empty).
func LocalFile(path, name string) (File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return File{}, err
	}
	if !st.Mode().IsRegular() {
		return File{}, fmt.Errorf("%s is not a regular file", path)
	}
	if name == "" {
		name = filepath.Base(path)
	}
	return File{Name: name, Size: st.Size(), Open: func() (io.ReadCloser, error) { return os.Open(path) }}, nil
}

// Submission is a job as a producer asks for it.
type Submission struct {
	Script         File
	Inputs         []File
	Runtime        string
	Args           []string
	Env            map[string]string
	Limits         LimitRequest
	Queue          string
	IdempotencyKey string
	// Network is what the job may reach: nothing (empty or "none"), the
	// queue's default ("default"), or group names and host patterns.
	Network []string
	// Webhook is the URL the result is POSTed to when the job ends.
	Webhook string
	// Image is the image to run on; empty is the queue's default.
	Image string
	// Tenant owns the job (API submissions); empty for direct producers.
	Tenant string
	// MaxOpen caps the tenant's unfinished jobs; 0 is no cap.
	MaxOpen int
	// InputsFrom takes outputs of finished jobs as inputs, copied inside
	// the store (Draft.AddInputsFrom).
	InputsFrom []InputFrom
}

// Enqueued tells where a submission went.
type Enqueued struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	// Existing is set when an idempotency key matched an earlier job, which
	// is returned instead of a new one.
	Existing bool `json:"existing"`
}

// resolveNetwork checks what a job asks to reach against the policy the
// queue's workers publish, and resolves it to hosts and ports.
func (c *Client) resolveNetwork(ctx context.Context, queue string, asked []string) (*NetworkPolicy, error) {
	if len(asked) == 0 || (len(asked) == 1 && asked[0] == NetworkNone) {
		return nil, nil
	}
	b, err := c.rdb.HGet(ctx, keys.Egress, queue).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, &FieldError{Field: "network", Msg: fmt.Sprintf("queue %q allows no network (no worker serving it has a network policy for it)", queue)}
	}
	if err != nil {
		return nil, fmt.Errorf("read the network policy of queue %s: %w", queue, err)
	}
	var p publishedEgress
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("network policy of queue %s: %w", queue, err)
	}
	cfg := EgressConfig{Groups: p.Groups, Queues: map[string]QueueEgress{queue: p.Queue}, Ports: p.Ports}
	return cfg.ResolveNetwork(queue, asked)
}

// State is where a job is in its life.
type State string

// States.
const (
	StatePending   State = "pending"
	StateScheduled State = "scheduled"
	StateActive    State = "active"
	StateRetry     State = "retry"
	StateDone      State = "done"
)

// JobStatus is a job's state and, once done, its result.
type JobStatus struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	// Tenant owns the job when it came through the API.
	Tenant string `json:"tenant,omitempty"`
	State  State  `json:"state"`
	// Retried counts attempts that ended in a system error.
	Retried  int `json:"retried"`
	MaxRetry int `json:"max_retry"`
	// LastError is the last system error, if any.
	LastError     string    `json:"last_error,omitempty"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	Result        *Result   `json:"result,omitempty"`
	// Webhook is the job's webhook delivery, once the job is done.
	Webhook *webhook.Status `json:"webhook_delivery,omitempty"`
}

// StatusDoc is what `sandq status --json` prints for a finished job: the
// result document (what the webhook carries) and the delivery log.
type StatusDoc struct {
	*Result
	WebhookDelivery *webhook.Status `json:"webhook_delivery,omitempty"`
}

// Status finds a job in any queue, whoever owns it: for direct producers
// and operators, who hold Redis credentials. Tenant(t).Status sees only a
// tenant's jobs.
func (c *Client) Status(ctx context.Context, id string) (*JobStatus, error) {
	return c.status(ctx, id, nil)
}

// StatusIn is Status for a job whose queue is known.
func (c *Client) StatusIn(ctx context.Context, queue, id string) (*JobStatus, error) {
	return c.statusIn(ctx, queue, id, nil)
}

// status finds a job in any queue; a job whose tenant is not *tenant (when
// tenant is not nil) is not found.
func (c *Client) status(ctx context.Context, id string, tenant *string) (*JobStatus, error) {
	if err := CheckJobID(id); err != nil {
		return nil, err
	}
	queues, err := c.insp.Queues()
	err = redisFailure(err)
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	for _, q := range queues {
		st, err := c.statusIn(ctx, q, id, tenant)
		if errors.Is(err, ErrJobNotFound) {
			continue
		}
		return st, err
	}
	return nil, fmt.Errorf("%w: %s", ErrJobNotFound, id)
}

func (c *Client) statusIn(ctx context.Context, queue, id string, tenant *string) (*JobStatus, error) {
	info, err := c.insp.GetTaskInfo(queue, id)
	err = redisFailure(err)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", id, err)
	}
	if tenant != nil {
		if owner, ok := OwnerOf(info.Payload); !ok || owner != *tenant {
			return nil, fmt.Errorf("%w: %s", ErrJobNotFound, id)
		}
	}
	st := statusOf(info)
	if st.State == StateDone {
		st.Webhook = c.webhookStatus(ctx, st.Result)
	}
	return st, nil
}

// TenantJobs is the view of one tenant's jobs. Through it, a job of
// another tenant or of a direct producer is ErrJobNotFound, exactly like a
// job that does not exist, so an ID tells nothing about who owns it. The
// API reads and changes jobs only through it.
type TenantJobs struct {
	c      *Client
	tenant string
}

// Tenant returns the view of a tenant's jobs.
func (c *Client) Tenant(tenant string) TenantJobs { return TenantJobs{c: c, tenant: tenant} }

// Status finds one of the tenant's jobs in any queue.
func (t TenantJobs) Status(ctx context.Context, id string) (*JobStatus, error) {
	return t.c.status(ctx, id, &t.tenant)
}

// StatusIn is Status for a job whose queue is known.
func (t TenantJobs) StatusIn(ctx context.Context, queue, id string) (*JobStatus, error) {
	return t.c.statusIn(ctx, queue, id, &t.tenant)
}

// Cancel is Client.Cancel for one of the tenant's jobs.
func (t TenantJobs) Cancel(ctx context.Context, id string) (CancelOutcome, error) {
	st, err := t.Status(ctx, id)
	if err != nil {
		return "", err
	}
	return t.c.cancel(ctx, st)
}

func statusOf(info *asynq.TaskInfo) *JobStatus {
	st := &JobStatus{ID: info.ID, Queue: info.Queue, Retried: info.Retried, MaxRetry: info.MaxRetry, LastError: info.LastErr}
	if job, err := ParseJob(info.Payload); err == nil {
		st.Tenant = job.Tenant
	}
	switch info.State {
	case asynq.TaskStatePending:
		st.State = StatePending
	case asynq.TaskStateScheduled:
		st.State, st.NextAttemptAt = StateScheduled, info.NextProcessAt
	case asynq.TaskStateRetry:
		st.State, st.NextAttemptAt = StateRetry, info.NextProcessAt
	case asynq.TaskStateActive:
		st.State = StateActive
	case asynq.TaskStateCompleted, asynq.TaskStateArchived:
		st.State = StateDone
		if len(info.Result) > 0 {
			if r, err := ParseResult(info.Result); err == nil {
				st.Result = r
			}
		}
		if st.Result == nil {
			// Archived without a result: asynq gave up on it (lease or
			// deadline lost, retries exhausted) before a result was written.
			reason := info.LastErr
			if reason == "" {
				reason = "the job ended without a result"
			}
			st.Result = &Result{ID: info.ID, Queue: info.Queue, Status: StatusError, Reason: reason, Outputs: []OutputDoc{}}
		}
	default:
		st.State = State(info.State.String())
	}
	return st
}

// Wait follows a job until it is done, calling onState (if not nil) on
// every read of its state. It learns of the job's end from the worker's
// completion message (WatchDone), and reads the state every PollInterval
// besides, in case the message was lost. It returns when the job is done
// or ctx ends.
func (c *Client) Wait(ctx context.Context, id string, onState func(*JobStatus)) (*JobStatus, error) {
	w := c.WatchDone(ctx, id)
	defer w.Stop()
	for {
		st, err := c.Status(ctx, id)
		if err != nil {
			return nil, err
		}
		if onState != nil {
			onState(st)
		}
		if st.State == StateDone {
			return st, nil
		}
		if err := w.Next(ctx); err != nil {
			return st, err
		}
	}
}

// CancelOutcome says what a cancel did.
type CancelOutcome string

// Cancel outcomes.
const (
	// CancelRemoved: the job had not started; it was removed from its queue.
	CancelRemoved CancelOutcome = "removed"
	// CancelSignalled: the job is running; its sandbox is being killed and it
	// will end canceled.
	CancelSignalled CancelOutcome = "signalled"
	// CancelQueued: the job had not started but has a webhook; it ends
	// canceled (without running) as soon as a worker takes it, and its
	// webhook is sent.
	CancelQueued CancelOutcome = "queued"
)

// Cancel removes a job that has not started, or kills a running job's
// sandbox so that it ends canceled.
func (c *Client) Cancel(ctx context.Context, id string) (CancelOutcome, error) {
	st, err := c.Status(ctx, id)
	if err != nil {
		return "", err
	}
	return c.cancel(ctx, st)
}

// cancel cancels the job st shows, found by its owner's view.
func (c *Client) cancel(ctx context.Context, st *JobStatus) (CancelOutcome, error) {
	id := st.ID
	if st.State == StateDone {
		return "", fmt.Errorf("%w: %s ended %s", ErrJobFinished, id, st.Result.Status)
	}
	// The marker is set first: a worker that picks the job up from now on
	// ends it canceled without running it.
	if err := c.rdb.Set(ctx, keys.Cancel(id), "1", cancelMarkerTTL).Err(); err != nil {
		return "", fmt.Errorf("cancel %s: %w", id, err)
	}
	if st.State != StateActive && c.hasWebhook(ctx, st.Queue, id) {
		// Its producer waits for an event: the job stays queued with the
		// marker (now, if it was waiting for a retry), and the first worker
		// to take it ends it canceled, without a sandbox, and sends the
		// webhook.
		if st.State == StateScheduled || st.State == StateRetry {
			if err := redisFailure(c.insp.RunTask(st.Queue, id)); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
				return "", fmt.Errorf("cancel %s: %w", id, err)
			}
		}
		return CancelQueued, nil
	}
	if st.State != StateActive {
		err := c.insp.DeleteTask(st.Queue, id)
		if err == nil {
			c.rdb.Del(context.WithoutCancel(ctx), keys.Cancel(id))
			if st.Tenant != "" {
				ReleaseOpen(context.WithoutCancel(ctx), c.rdb, &Job{ID: id, Queue: st.Queue, Tenant: st.Tenant})
			}
			if st.State == StatePending || st.State == StateScheduled || st.State == StateRetry {
				c.removeJobObjects(ctx, id)
			}
			return CancelRemoved, nil
		}
		// It became active (or finished) meanwhile.
		if now, serr := c.StatusIn(ctx, st.Queue, id); serr == nil && now.State == StateDone {
			return "", fmt.Errorf("%w: %s ended %s", ErrJobFinished, id, now.Result.Status)
		}
	}
	if err := c.rdb.Publish(ctx, keys.CancelChannel, id).Err(); err != nil {
		return "", fmt.Errorf("cancel %s: %w", id, err)
	}
	return CancelSignalled, nil
}

// hasWebhook reports whether a queued job will send a webhook: its own URL
// or its queue's default.
func (c *Client) hasWebhook(ctx context.Context, queue, id string) bool {
	info, err := c.insp.GetTaskInfo(queue, id)
	if err != nil {
		return false
	}
	if job, err := ParseJob(info.Payload); err == nil && job.Webhook != "" {
		return true
	}
	return c.webhookPolicy(ctx, queue).HasDefault
}

func (c *Client) removeJobObjects(ctx context.Context, id string) {
	if err := c.store.RemovePrefix(context.WithoutCancel(ctx), JobPrefix(id)); err != nil {
		c.logger.Warn("removing a cancelled job's files", "job_id", id, "err", err)
	}
}

// Cancellation crosses processes through Redis: the producer sets a marker
// (seen by a worker that has yet to start the job) and publishes the job ID
// (seen by the worker running it). asynq's own CancelProcessing is not used:
// it would hand the task back for a retry instead of ending it.
const cancelMarkerTTL = 7 * 24 * time.Hour
