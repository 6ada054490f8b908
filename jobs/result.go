package jobs

import (
	"encoding/json"
	"time"

	"github.com/sandq/sandq/executor/egress"
)

// Status is how a job ended.
type Status string

// Final statuses.
const (
	// StatusSucceeded: the script exited 0.
	StatusSucceeded Status = "succeeded"
	// StatusFailed: the script exited non-zero, or its sandbox died at its
	// task limit (a result, not retried).
	StatusFailed Status = "failed"
	// StatusTimedOut: the wall-clock limit killed the sandbox.
	StatusTimedOut Status = "timed_out"
	// StatusOutOfMemory: the memory limit killed the sandbox.
	StatusOutOfMemory Status = "out_of_memory"
	// StatusCanceled: cancelled while running.
	StatusCanceled Status = "canceled"
	// StatusError: the system could not run the job, after its retries.
	StatusError Status = "error"
)

// Succeeded reports whether the job's script exited 0.
func (s Status) Succeeded() bool { return s == StatusSucceeded }

// Result is the document a finished job leaves: the asynq task result, what
// `sandq status --json` prints and what webhooks carry.
type Result struct {
	ID     string `json:"id"`
	Queue  string `json:"queue"`
	Status Status `json:"status"`
	// ExitCode is the script's exit status; null when it was killed.
	ExitCode *int `json:"exit_code"`
	// Signal that ended the script, if one did (SIGKILL for timeouts,
	// memory kills, task-limit kills and cancellations).
	Signal string `json:"signal,omitempty"`
	// Reason explains every status but succeeded and failed.
	Reason  string `json:"reason,omitempty"`
	Runtime string `json:"runtime"`
	// Image is the image the job ran on, and ImageDigest its content digest
	// (empty for an image made before sandq recorded digests).
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// Attempt is the 1-based attempt that produced this result.
	Attempt     int       `json:"attempt"`
	SubmittedAt time.Time `json:"submitted_at"`
	StartedAt   time.Time `json:"started_at"`
	FinishedAt  time.Time `json:"finished_at"`
	// DurationMS is the script's run time, start to exit.
	DurationMS int64       `json:"duration_ms"`
	Limits     LimitsDoc   `json:"limits"`
	Stdout     *LogDoc     `json:"stdout"`
	Stderr     *LogDoc     `json:"stderr"`
	Outputs    []OutputDoc `json:"outputs"`
	// SkippedOutputs are entries of the outputs directory not collected:
	// links, FIFOs, sockets, devices, names that are not UTF-8, or files over
	// a cap.
	SkippedOutputs []SkippedDoc `json:"skipped_outputs,omitempty"`
	// Egress is the job's network: what it asked for, what it was allowed,
	// and every request its proxy allowed or refused. Absent for jobs
	// without network.
	Egress  *EgressDoc `json:"egress,omitempty"`
	Timings *Timings   `json:"timings,omitempty"`
	// Webhook is where this document is POSTed, with the webhook-id every
	// attempt carries.
	Webhook *WebhookRef `json:"webhook,omitempty"`
	Worker  string      `json:"worker,omitempty"`
}

// LimitsDoc is the limits a job ran under.
type LimitsDoc struct {
	TimeoutSeconds float64 `json:"timeout_seconds"`
	MemoryBytes    int64   `json:"memory_bytes"`
	DiskBytes      int64   `json:"disk_bytes"`
	OutputBytes    int64   `json:"output_bytes"`
	OutputFiles    int     `json:"output_files"`
}

func limitsDoc(l Limits) LimitsDoc {
	return LimitsDoc{TimeoutSeconds: l.Timeout.Seconds(), MemoryBytes: l.Memory, DiskBytes: l.Disk, OutputBytes: l.OutputBytes, OutputFiles: l.OutputFiles}
}

// LogDoc is one output stream: its tail, and a link to the stored log.
type LogDoc struct {
	// Tail is the end of the stream (invalid UTF-8 replaced).
	Tail string `json:"tail"`
	// Truncated is set when Tail is not the whole stream.
	Truncated bool `json:"truncated"`
	// Bytes is the stream's whole length.
	Bytes int64 `json:"bytes"`
	// DroppedBytes were cut from the middle of the stored log.
	DroppedBytes int64     `json:"dropped_bytes"`
	URL          string    `json:"url,omitempty"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
	Key          string    `json:"key,omitempty"`
}

// OutputDoc is one file the job wrote.
type OutputDoc struct {
	Path        string    `json:"path"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	ContentType string    `json:"content_type"`
	URL         string    `json:"url"`
	ExpiresAt   time.Time `json:"expires_at"`
	Key         string    `json:"key"`
}

// SkippedDoc is an output not collected, and why.
type SkippedDoc struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Reason string `json:"reason"`
}

// EgressDoc is a networked job's policy and audit.
type EgressDoc struct {
	Asked []string `json:"asked"`
	Hosts []string `json:"hosts"`
	Ports []int    `json:"ports"`
	// Allowed, Refused and Failed (allowed, but the upstream could not be
	// reached) count the recorded requests.
	Allowed  int            `json:"allowed"`
	Refused  int            `json:"refused"`
	Failed   int            `json:"failed"`
	Requests []egress.Event `json:"requests"`
}

// Timings break a job's time down by stage, in milliseconds. MemoryWaitMS
// is the time the job waited in the worker for room in its memory budget,
// before its sandbox was made. WarmStart is set when the job's container
// was created ahead of it (a warm sandbox): SandboxStartMS then counts only
// the download and the start.
type Timings struct {
	QueueWaitMS     int64 `json:"queue_wait_ms"`
	MemoryWaitMS    int64 `json:"memory_wait_ms"`
	DownloadMS      int64 `json:"download_ms"`
	SandboxStartMS  int64 `json:"sandbox_start_ms"`
	RunMS           int64 `json:"run_ms"`
	UploadMS        int64 `json:"upload_ms"`
	TotalInWorkerMS int64 `json:"total_in_worker_ms"`
	WarmStart       bool  `json:"warm_start,omitempty"`
}

// ParseResult reads a result document.
func ParseResult(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
