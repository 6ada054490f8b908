package jobs

import (
	"encoding/json"
	"time"

	"github.com/sandq/sandq/executor"
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
	DurationMS int64 `json:"duration_ms"`
	// CPUSeconds is the CPU time the job's sandbox used while the job ran
	// (its processes and gVisor's kernel working for them), from the
	// sandbox's cgroup; absent when the job did not run or it could not
	// be read.
	CPUSeconds *float64    `json:"cpu_seconds,omitempty"`
	Limits     LimitsDoc   `json:"limits"`
	Stdout     *LogDoc     `json:"stdout"`
	Stderr     *LogDoc     `json:"stderr"`
	Outputs    []OutputDoc `json:"outputs"`
	// SkippedOutputs are entries of the outputs directory not collected:
	// symbolic links, devices, names that are not UTF-8 or have control
	// characters, paths over the path cap or whose object key is over the
	// store's limit, or files over a cap. At most executor.MaxSkippedListed
	// are listed; SkippedOutputsOmitted counts the rest.
	SkippedOutputs []SkippedDoc `json:"skipped_outputs,omitempty"`
	// SkippedOutputsOmitted counts the skipped entries not listed.
	SkippedOutputsOmitted int `json:"skipped_outputs_omitted,omitempty"`
	// Trimmed is set when the document was over the worker's result size
	// cap: it says what was cut, and links the full manifest.
	Trimmed *TrimmedDoc `json:"trimmed,omitempty"`
	// Egress is the job's network: what it asked for, what it was allowed,
	// and every request its proxy allowed or refused. Absent for jobs
	// without network.
	Egress  *EgressDoc `json:"egress,omitempty"`
	Timings *Timings   `json:"timings,omitempty"`
	// Webhook is where this document is POSTed, with the webhook-id every
	// attempt carries.
	Webhook *WebhookRef `json:"webhook,omitempty"`
	Worker  string      `json:"worker,omitempty"`
	// Inputs are the files the job was given, each with where it came
	// from when it was another job's output.
	Inputs []InputDoc `json:"inputs,omitempty"`

	// UploadedBytes is what this attempt stored (outputs and logs), counted
	// before a size cap cuts the lists: for the worker's metrics, not part
	// of the document.
	UploadedBytes int64 `json:"-"`
}

// LimitsDoc is the limits a job ran under.
type LimitsDoc struct {
	TimeoutSeconds float64 `json:"timeout_seconds"`
	MemoryBytes    int64   `json:"memory_bytes"`
	DiskBytes      int64   `json:"disk_bytes"`
	OutputBytes    int64   `json:"output_bytes"`
	OutputFiles    int     `json:"output_files"`
	// CPUs is the CPU limit, in cores; absent for a job refused before
	// its limits were known.
	CPUs float64 `json:"cpus,omitempty"`
}

// NewLimitsDoc is the result's account of a job's limits.
func NewLimitsDoc(l Limits) LimitsDoc {
	return LimitsDoc{TimeoutSeconds: l.Timeout.Seconds(), MemoryBytes: l.Memory, DiskBytes: l.Disk, OutputBytes: l.OutputBytes, OutputFiles: l.OutputFiles, CPUs: l.CPUs}
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

// SkippedDoc is an output not collected, and why. Path is shown escaped (Go
// string syntax) when the name is not valid UTF-8 or has control
// characters, and cut to 1024 bytes (ending in "…") when longer.
type SkippedDoc struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Reason string `json:"reason"`
}

// TrimmedDoc says what was cut from a result document over the worker's
// result size cap (Config.MaxResultBytes). Lists are cut from their end:
// skipped outputs first, then inputs, then outputs beyond the first
// MinOutputsListed, then egress requests (refused and failed ones before
// allowed ones), then the remaining outputs, then the log tails. Counts
// stay whole.
type TrimmedDoc struct {
	Reason   string `json:"reason"`
	MaxBytes int64  `json:"max_bytes"`
	// SkippedOutputs, Outputs and EgressRequests count the entries cut from
	// skipped_outputs, outputs and egress.requests.
	SkippedOutputs int `json:"skipped_outputs,omitempty"`
	Outputs        int `json:"outputs,omitempty"`
	EgressRequests int `json:"egress_requests,omitempty"`
	// Inputs counts the entries cut from inputs.
	Inputs int `json:"inputs,omitempty"`
	// EgressDestinations and EgressRefusals count the per-destination
	// totals folded into egress.other_destinations and other_refusals
	// (their counts and bytes stay in those totals).
	EgressDestinations int `json:"egress_destinations,omitempty"`
	EgressRefusals     int `json:"egress_refusals,omitempty"`
	// LogTailBytes counts the bytes cut from the start of the log tails.
	LogTailBytes int `json:"log_tail_bytes,omitempty"`
	// Manifest links the whole lists, as a Manifest document. Absent when
	// the worker could not upload one (never for a job that ran).
	Manifest *ManifestRef `json:"manifest,omitempty"`
}

// ManifestRef is a presigned link to a job's Manifest.
type ManifestRef struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
	Key       string    `json:"key"`
}

// Manifest is the whole of the lists of a trimmed result, stored beside the
// job's outputs as manifest.json.
type Manifest struct {
	ID                    string        `json:"id"`
	Outputs               []OutputDoc   `json:"outputs"`
	SkippedOutputs        []SkippedDoc  `json:"skipped_outputs"`
	SkippedOutputsOmitted int           `json:"skipped_outputs_omitted"`
	EgressRequests        []EgressEvent `json:"egress_requests,omitempty"`
	// EgressDestinations and EgressRefusals are the audit's per-destination
	// totals, before any was folded into the result's "other" totals.
	EgressDestinations []EgressDestination `json:"egress_destinations,omitempty"`
	EgressRefusals     []EgressRefusal     `json:"egress_refusals,omitempty"`
	// Inputs are the job's inputs (Result.Inputs), whole.
	Inputs []InputDoc `json:"inputs,omitempty"`
}

// EgressDoc is a networked job's policy and the audit of its network.
//
// The counts and totals cover every request the job made through its
// proxy; only the list of single requests is capped, and when it is full,
// refusals are what is left out of it. Every request that passed the
// policy is in Destinations (or OtherDestinations) with its bytes,
// whether or not it is listed in Requests.
type EgressDoc struct {
	Asked []string `json:"asked"`
	Hosts []string `json:"hosts"`
	Ports []int    `json:"ports"`
	// Allowed, Refused and Failed (allowed, but the upstream could not be
	// reached) count every request through the proxy, listed in Requests
	// or not. Refused also counts connections the proxy refused before
	// reading a request (the job's connection or byte limit).
	Allowed int `json:"allowed"`
	Refused int `json:"refused"`
	Failed  int `json:"failed"`
	// BytesOut and BytesIn total what the allowed and failed requests
	// exchanged with upstream (see EgressEvent).
	BytesOut int64 `json:"bytes_out"`
	BytesIn  int64 `json:"bytes_in"`
	// Requests lists requests one by one in the order they arrived, at most
	// the proxy's cap (1000). Past it, an allowed or failed request takes
	// the place of the latest refusal listed, and further refusals are
	// only counted. RequestsUnlisted counts the requests not listed.
	Requests         []EgressEvent `json:"requests"`
	RequestsUnlisted int           `json:"requests_unlisted"`
	// Destinations total, per host and port, every request that passed
	// the policy, in the order first seen: at most the proxy's cap (256)
	// entries; further destinations are added up in OtherDestinations.
	Destinations      []EgressDestination `json:"destinations"`
	OtherDestinations *EgressOther        `json:"other_destinations,omitempty"`
	// Refusals total the refused requests per host and port (host "" for
	// connections refused before a request), capped like Destinations.
	Refusals      []EgressRefusal `json:"refusals"`
	OtherRefusals *EgressOther    `json:"other_refusals,omitempty"`
	// Bypass counts what the job sent around its proxy, which the
	// firewall refused. Absent when it could not be read.
	Bypass *EgressBypass `json:"bypass,omitempty"`
}

// EgressEvent.Decision values.
const (
	EgressAllowed = "allowed"
	EgressRefused = "refused"
	EgressFailed  = "failed"
)

// EgressEvent is one request through the job's proxy (or a connection it
// refused before any request).
type EgressEvent struct {
	Time   time.Time `json:"time"`
	Host   string    `json:"host"`
	Port   int       `json:"port"`
	Method string    `json:"method"` // CONNECT or the HTTP method
	// Decision is allowed, refused or failed (allowed, but upstream could
	// not be reached).
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	// BytesOut and BytesIn are what went to and came from upstream: for a
	// CONNECT tunnel, what went through it; for a plain http:// request,
	// the request as sent (request line, headers, body) and the response
	// as received.
	BytesOut int64 `json:"bytes_out"`
	BytesIn  int64 `json:"bytes_in"`
}

// EgressDestination totals a job's requests to one host and port that
// passed the policy.
type EgressDestination struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Allowed  int    `json:"allowed"`
	Failed   int    `json:"failed"`
	BytesOut int64  `json:"bytes_out"`
	BytesIn  int64  `json:"bytes_in"`
}

// EgressRefusal totals a job's refused requests to one host and port, with
// the first refusal's reason.
type EgressRefusal struct {
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Count  int    `json:"count"`
	Reason string `json:"reason"`
}

// EgressOther adds up the destinations past the cap of Destinations or
// Refusals: how many there were, and their requests (Count) and bytes.
type EgressOther struct {
	Destinations int   `json:"destinations"`
	Count        int   `json:"count"`
	Allowed      int   `json:"allowed,omitempty"`
	Failed       int   `json:"failed,omitempty"`
	BytesOut     int64 `json:"bytes_out,omitempty"`
	BytesIn      int64 `json:"bytes_in,omitempty"`
}

// EgressBypass counts what a job sent that was not for its proxy (a tool
// that ignores the proxy settings, a direct socket): the firewall refused
// it at once, TCP with a reset and anything else with an ICMP port
// unreachable. Each connection attempt or datagram is one packet.
type EgressBypass struct {
	Attempts int64 `json:"attempts"`
	Bytes    int64 `json:"bytes"`
}

// Timings break a job's time down by stage, in milliseconds. MemoryWaitMS
// is the time the job waited in the worker for room in its memory budget,
// before its sandbox was made. WarmStart is set when the job's container
// was created ahead of it (a warm sandbox): SandboxStartMS then counts only
// the download and the start. StartMode says how the job's container came
// to run it: StartCold, StartWarm or StartRestored (from a snapshot
// template, see `sandq worker --snapshots`); empty for a job cancelled
// before it had a sandbox.
type Timings struct {
	QueueWaitMS     int64  `json:"queue_wait_ms"`
	MemoryWaitMS    int64  `json:"memory_wait_ms"`
	DownloadMS      int64  `json:"download_ms"`
	SandboxStartMS  int64  `json:"sandbox_start_ms"`
	RunMS           int64  `json:"run_ms"`
	UploadMS        int64  `json:"upload_ms"`
	TotalInWorkerMS int64  `json:"total_in_worker_ms"`
	WarmStart       bool   `json:"warm_start,omitempty"`
	StartMode       string `json:"start_mode,omitempty"`
}

// Start modes of a job's container (Timings.StartMode).
const (
	StartCold     = executor.StartCold
	StartWarm     = executor.StartWarm
	StartRestored = executor.StartRestored
)

// ParseResult reads a result document.
func ParseResult(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
