package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
)

// TaskType is the asynq task type of a completion webhook delivery.
const TaskType = "webhook:deliver"

// Payload is a delivery task's payload: the job whose result goes to URL.
// The body is read from the job's stored result at each attempt.
type Payload struct {
	JobID string `json:"job_id"`
	Queue string `json:"queue"`
	URL   string `json:"url"`
	// EventID is the webhook-id header, the same on every attempt.
	EventID string `json:"event_id"`
}

// TaskID is the ID of a job's delivery task, derived from the job's, so a
// job that finishes twice (at-least-once execution) still has one
// delivery.
func TaskID(jobID string) string { return "wh-" + jobID }

// EventID is the webhook-id every delivery of a job's result carries.
func EventID(jobID string) string { return "msg_" + jobID }

// TaskOptions are how a delivery task is queued.
type TaskOptions struct {
	// Queue is the asynq queue deliveries wait in.
	Queue string
	// MaxAttempts: the task's MaxRetry is one more, since the handler
	// gives up after MaxAttempts itself, so that a delivery put back for
	// want of a slot on what would be its last try is not archived by
	// asynq.
	MaxAttempts int
	// Timeout of one request; the task's timeout is 30s more.
	Timeout time.Duration
	// Retention keeps the finished task (the delivery's state) as long as
	// the job's result.
	Retention time.Duration
}

// Enqueue queues the delivery of a finished job's result; a delivery
// already queued for the job is left as it is.
func Enqueue(ctx context.Context, client *asynq.Client, p Payload, o TaskOptions) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = client.EnqueueContext(ctx, asynq.NewTask(TaskType, b),
		asynq.TaskID(TaskID(p.JobID)), asynq.Queue(o.Queue), asynq.MaxRetry(o.MaxAttempts),
		asynq.Timeout(o.Timeout+30*time.Second), asynq.Retention(o.Retention))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue the webhook: %w", err)
	}
	return nil
}

// Status is a job's webhook and its deliveries so far.
type Status struct {
	URL string `json:"url"`
	ID  string `json:"id"`
	// State: pending, retry, delivered, failed (archived: given up, or
	// stopped by a 3xx, 4xx or 410; asynqmon can retry it), or unknown
	// (the delivery task could not be read).
	State    string    `json:"state"`
	Attempts []Attempt `json:"attempts"`
}

// ReadStatus reads the state of the delivery of job jobID's result to url
// (event id) from its task in queue and its delivery log.
func ReadStatus(ctx context.Context, insp *asynq.Inspector, rdb redis.UniversalClient, queue, jobID, url, id string) *Status {
	ws := &Status{URL: url, ID: id, Attempts: []Attempt{}}
	info, err := insp.GetTaskInfo(queue, TaskID(jobID))
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
	entries, _ := rdb.LRange(ctx, keys.WebhookLog(jobID), 0, -1).Result()
	for _, e := range entries {
		var a Attempt
		if json.Unmarshal([]byte(e), &a) == nil {
			ws.Attempts = append(ws.Attempts, a)
		}
	}
	return ws
}
