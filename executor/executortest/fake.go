// Package executortest provides a fake executor.Runner for tests of what
// runs sandboxes (the worker's handler): its sandboxes are plain
// directories, and each run ends as the test scripts it, without root,
// runsc or a network. Outputs are collected by the real
// executor.CollectOutputs, so what a fake job writes is uploaded as a real
// one's would be.
package executortest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandq/sandq/executor"
)

// A Job is what a fake sandbox's run does: it may write into outputs (the
// sandbox's outputs directory) and read the script and inputs, and returns
// how the run ended and what it printed. It runs until it returns or ctx
// ends; a Job that honours ctx lets cancellation and shutdown be tested.
type Job func(ctx context.Context, sb *Sandbox) Run

// Run is how a fake run ended.
type Run struct {
	// Outcome flags: ExitCode, Signal, TimedOut, OOMKilled, TaskLimited.
	// Interrupted, the timestamps and the logs are filled in by the fake.
	Outcome executor.Outcome
	// Stdout and Stderr are printed as the run ends, after what the Job
	// printed while it ran (Sandbox.Print).
	Stdout string
	Stderr string
	// Err fails the run itself (the sandbox machinery), not the job.
	Err error
}

// Runner is a fake executor.Runner. Its fields may not change while a
// sandbox is in use.
type Runner struct {
	// Dir holds the sandboxes' directories.
	Dir string
	// Job is what every sandbox runs.
	Job Job
	// PrepareErr, CreateErr fail those steps of every sandbox.
	PrepareErr, CreateErr error

	mu        sync.Mutex
	prepared  []executor.Spec
	released  atomic.Int64
	sandboxes atomic.Int64
}

var _ executor.Runner = (*Runner)(nil)

// Prepare makes a sandbox's directories.
func (r *Runner) Prepare(ctx context.Context, spec executor.Spec) (executor.Sandbox, error) {
	r.mu.Lock()
	r.prepared = append(r.prepared, spec)
	r.mu.Unlock()
	if r.PrepareErr != nil {
		return nil, r.PrepareErr
	}
	n := r.sandboxes.Add(1)
	sb := &Sandbox{Spec: spec, r: r, job: r.Job, id: fmt.Sprintf("fake-%d", n), dir: filepath.Join(r.Dir, fmt.Sprintf("sb-%d", n))}
	for _, d := range []string{sb.InputsDir(), sb.JobDir(), sb.OutputsDir(), sb.logDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return sb, nil
}

// Prepared are the specs of every sandbox asked for, in order.
func (r *Runner) Prepared() []executor.Spec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]executor.Spec(nil), r.prepared...)
}

// Live is how many sandboxes were made and not released.
func (r *Runner) Live() int64 { return r.sandboxes.Load() - r.released.Load() }

// Sandbox is a fake sandbox: directories on the host.
type Sandbox struct {
	Spec    executor.Spec
	r       *Runner
	job     Job
	id, dir string
	ran     bool

	// mu guards what the job printed and where it goes live: a Job may
	// print from goroutines of its own.
	mu      sync.Mutex
	live    executor.LiveOutput
	printed map[string][]byte
}

var _ executor.Sandbox = (*Sandbox)(nil)

func (s *Sandbox) ID() string         { return s.id }
func (s *Sandbox) InputsDir() string  { return filepath.Join(s.dir, "inputs") }
func (s *Sandbox) JobDir() string     { return filepath.Join(s.dir, "job") }
func (s *Sandbox) OutputsDir() string { return filepath.Join(s.dir, "outputs") }
func (s *Sandbox) logDir() string     { return filepath.Join(s.dir, "logs") }

// Follow sends what the job prints from now on to out as well (see
// Print); what the run returns in Stdout and Stderr goes to it as the run
// ends.
func (s *Sandbox) Follow(out executor.LiveOutput) {
	s.mu.Lock()
	s.live = out
	s.mu.Unlock()
}

// Print is a running Job writing text to stream ("stdout" or "stderr"):
// it goes to the sandbox's log and, as it is written, to the LiveOutput
// the sandbox follows with, if any.
func (s *Sandbox) Print(stream, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.printed == nil {
		s.printed = map[string][]byte{}
	}
	s.printed[stream] = append(s.printed[stream], text...)
	if s.live != nil && text != "" {
		s.live.Write(stream, []byte(text))
	}
}

// Create fails with the runner's CreateErr, if any.
func (s *Sandbox) Create(ctx context.Context) error { return s.r.CreateErr }

// Run runs the sandbox's Job.
func (s *Sandbox) Run(ctx context.Context) (*executor.Outcome, error) {
	if s.ran {
		return nil, errors.New("fake sandbox: run twice")
	}
	s.ran = true
	if s.job == nil {
		return nil, errors.New("fake sandbox: the runner has no Job")
	}
	created := time.Now()
	run := s.job(ctx, s)
	if run.Err != nil {
		return nil, run.Err
	}
	s.Print(executor.StreamStdout, run.Stdout)
	s.Print(executor.StreamStderr, run.Stderr)
	out := run.Outcome
	out.CreatedAt, out.StartedAt, out.FinishedAt = created, created, time.Now()
	if ctx.Err() != nil {
		out.Interrupted = context.Cause(ctx)
		out.ExitCode = nil
		out.Signal = "SIGKILL"
	}
	s.mu.Lock()
	stdout, stderr := string(s.printed[executor.StreamStdout]), string(s.printed[executor.StreamStderr])
	s.mu.Unlock()
	var err error
	if out.Stdout, err = s.log("stdout", stdout); err != nil {
		return nil, err
	}
	if out.Stderr, err = s.log("stderr", stderr); err != nil {
		return nil, err
	}
	return &out, nil
}

func (s *Sandbox) log(name, text string) (executor.LogSummary, error) {
	p := filepath.Join(s.logDir(), name+".log")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		return executor.LogSummary{}, err
	}
	tail := text
	if n := s.Spec.Limits.LogTail; n > 0 && len(tail) > n {
		tail = tail[len(tail)-n:]
	}
	return executor.LogSummary{Path: p, Tail: []byte(tail), Bytes: int64(len(text))}, nil
}

// Outputs collects the outputs directory as a real sandbox's.
func (s *Sandbox) Outputs() (*executor.Collection, error) {
	l := s.Spec.Limits
	return executor.CollectOutputs(s.OutputsDir(), l.OutputFiles, l.OutputBytes)
}

// Release removes the sandbox's directories.
func (s *Sandbox) Release(ctx context.Context) error {
	s.r.released.Add(1)
	return os.RemoveAll(s.dir)
}
