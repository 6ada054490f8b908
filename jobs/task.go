package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
)

// TypeRun is the asynq task type of a job.
const TypeRun = "job:run"

// Transfers is how many files one job uploads (producer) or downloads and
// uploads (worker) at once.
const Transfers = 8

// Job is the payload of a job:run task: everything a worker needs to run it.
type Job struct {
	ID      string `json:"id"`
	Queue   string `json:"queue"`
	Runtime string `json:"runtime"`
	// Script and Inputs are objects in the store under UploadPrefix.
	Script         FileRef           `json:"script"`
	Inputs         []FileRef         `json:"inputs"`
	Args           []string          `json:"args,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Limits         Limits            `json:"limits"`
	TimeoutSeconds float64           `json:"timeout_seconds"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	Network        *NetworkPolicy    `json:"network,omitempty"`
	Webhook        string            `json:"webhook,omitempty"`
	// Image names the image the job runs on; empty is the queue's default.
	Image string `json:"image,omitempty"`
	// Tenant owns the job when it came through the API.
	Tenant       string    `json:"tenant,omitempty"`
	SubmittedAt  time.Time `json:"submitted_at"`
	UploadPrefix string    `json:"upload_prefix"`
}

// FileRef is an uploaded file.
type FileRef struct {
	Name   string `json:"name"`
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// From is set for an input copied from another job's output
	// (Submission.InputsFrom).
	From *InputOrigin `json:"from,omitempty"`
}

// Marshal is the job as a task payload.
func (j *Job) Marshal() ([]byte, error) {
	j.TimeoutSeconds = j.Limits.Timeout.Seconds()
	return json.Marshal(j)
}

// ParseJob reads a task payload; it refuses one without an ID, a script
// or a timeout.
func ParseJob(b []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("job payload: %w", err)
	}
	j.Limits.Timeout = time.Duration(j.TimeoutSeconds * float64(time.Second))
	if j.ID == "" || j.Script.Key == "" || j.Limits.Timeout <= 0 {
		return nil, fmt.Errorf("job payload: missing id, script or timeout")
	}
	return &j, nil
}

// JobPrefix is where all of a job's objects live in the store.
func JobPrefix(id string) string { return "jobs/" + id + "/" }

// NewJobID returns a random job ID.
func NewJobID() string { return uuid.NewString() }

// IdempotentJobID maps a tenant's idempotency key in a queue to its job
// ID, the same on every call, so a second enqueue with the key finds the
// first job. The tenant is part of the ID: two tenants' keys never name
// the same job, so a key tells a tenant nothing about another's jobs.
// Direct producers have tenant "" and keep the IDs they had before the
// tenant was part of it. Tenant and queue names hold no NUL (CheckQueue,
// the API's tenant names), nor do keys (CheckIdempotencyKey), so the
// hashed strings of distinct (tenant, queue, key) triples differ.
func IdempotentJobID(tenant, queue, key string) string {
	in := "sandq-idempotency\x00" + queue + "\x00" + key
	if tenant != "" {
		in = "sandq-idempotency-tenant\x00" + tenant + "\x00" + queue + "\x00" + key
	}
	h := sha256.Sum256([]byte(in))
	return "k-" + hex.EncodeToString(h[:16])
}

// OwnerOf returns the tenant of a job:run task's payload; ok is false for
// a payload that is not a job's.
func OwnerOf(payload []byte) (tenant string, ok bool) {
	var p struct {
		ID     string `json:"id"`
		Tenant string `json:"tenant"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || p.ID == "" {
		return "", false
	}
	return p.Tenant, true
}

var jobIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

// CheckJobID refuses IDs that are not ours.
func CheckJobID(id string) error {
	if !jobIDPattern.MatchString(id) {
		return fmt.Errorf("job ID %q is not valid", id)
	}
	return nil
}

// TaskOptions are the asynq options of a job's task.
func (c Config) TaskOptions(j *Job) []asynq.Option {
	return []asynq.Option{
		asynq.TaskID(j.ID),
		asynq.Queue(j.Queue),
		asynq.MaxRetry(max(0, c.MaxRetry)),
		asynq.Timeout(j.Limits.Timeout + c.FinishAllowance),
		asynq.Retention(c.ResultRetention),
	}
}
