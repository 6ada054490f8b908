package mcp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/jobs"
)

// RunCodeInput is run_code's arguments.
type RunCodeInput struct {
	Language string      `json:"language" jsonschema:"python, node or shell"`
	Code     string      `json:"code" jsonschema:"the script's source"`
	Files    []FileInput `json:"files,omitempty" jsonschema:"files for the script, in $INPUT_DIR (/mnt/inputs) under their names"`
	// InputsFrom takes outputs of this server's earlier jobs. Links to
	// anywhere else are not taken: the server fetching URLs an assistant
	// names would let it reach whatever the server can (SSRF).
	InputsFrom []InputFrom `json:"inputs_from,omitempty" jsonschema:"outputs of earlier run_code jobs (by job_id, optionally a glob of their paths) as inputs, in $INPUT_DIR under their output paths; the job must have succeeded"`
	Network    []string    `json:"network,omitempty" jsonschema:"what the script may reach: group names or host patterns the queue allows, or [\"default\"]; none when omitted"`
	// TimeoutSeconds is the job's wall-clock limit.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty" jsonschema:"wall-clock limit in seconds; the queue's default when omitted"`
	Image          string  `json:"image,omitempty" jsonschema:"image to run on; the default when omitted"`
}

// FileInput is a file given inline: its text or its bytes in base64.
type FileInput struct {
	Name   string `json:"name" jsonschema:"relative path under $INPUT_DIR, e.g. data.csv"`
	Text   string `json:"text,omitempty" jsonschema:"the file's content as text (UTF-8)"`
	Base64 string `json:"base64,omitempty" jsonschema:"the file's content in base64 (binary files); give text or base64, not both"`
}

// InputFrom names outputs of an earlier job.
type InputFrom struct {
	JobID string `json:"job_id" jsonschema:"a job_id run_code returned"`
	Glob  string `json:"glob,omitempty" jsonschema:"outputs whose path matches (path.Match: * does not cross /); all when omitted"`
}

// JobIDInput is the arguments of run_job_status and cancel_job.
type JobIDInput struct {
	JobID       string  `json:"job_id" jsonschema:"the job_id run_code returned"`
	WaitSeconds float64 `json:"wait_seconds,omitempty" jsonschema:"run_job_status: how long to wait for the job to end, at most 60; 0 answers at once"`
}

// CancelOutput is what cancel_job returns.
type CancelOutput struct {
	JobID string `json:"job_id"`
	// Outcome is removed (it had not started), signalled (it is being
	// killed) or queued (it ends canceled when a worker takes it).
	Outcome string `json:"outcome"`
}

func (s *Server) runCode(ctx context.Context, req *sdk.CallToolRequest, in RunCodeInput) (*sdk.CallToolResult, *JobOutput, error) {
	b, err := s.backendOf(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	sub, err := s.submission(in)
	if err != nil {
		return nil, nil, err
	}
	enq, err := b.Enqueue(ctx, sub)
	if err != nil {
		return nil, nil, explain(err)
	}
	s.logger.Info("run_code job enqueued", "job_id", enq.ID, "queue", enq.Queue, "tenant", tenantOf(b))
	return s.await(ctx, b, enq.ID, s.cfg.MaxWait)
}

// submission turns run_code's arguments into a job, refusing, by name,
// what is wrong with them.
func (s *Server) submission(in RunCodeInput) (jobs.Submission, error) {
	if in.Language == "" {
		return jobs.Submission{}, errors.New("language: give python, node or shell")
	}
	rt, err := jobs.ResolveRuntime(in.Language, "")
	if err != nil {
		return jobs.Submission{}, err
	}
	if in.Code == "" {
		return jobs.Submission{}, errors.New("code: empty; give the script's source")
	}
	name := map[string]string{jobs.RuntimePython: "main.py", jobs.RuntimeNode: "main.js", jobs.RuntimeShell: "main.sh"}[rt]
	sub := jobs.Submission{
		Script: bytesFile(name, []byte(in.Code)), Runtime: rt, Network: in.Network, Image: in.Image, Queue: s.queue,
		Limits: jobs.LimitRequest{TimeoutSeconds: in.TimeoutSeconds},
	}
	for i, f := range in.Files {
		var data []byte
		switch {
		case f.Text != "" && f.Base64 != "":
			return jobs.Submission{}, fmt.Errorf("files[%d] (%s): give text or base64, not both", i, f.Name)
		case f.Base64 != "":
			if data, err = base64.StdEncoding.DecodeString(f.Base64); err != nil {
				return jobs.Submission{}, fmt.Errorf("files[%d] (%s): base64: %w", i, f.Name, err)
			}
		default:
			data = []byte(f.Text)
		}
		sub.Inputs = append(sub.Inputs, bytesFile(f.Name, data))
	}
	for _, f := range in.InputsFrom {
		sub.InputsFrom = append(sub.InputsFrom, jobs.InputFrom{Job: f.JobID, Glob: f.Glob})
	}
	return sub, nil
}

func bytesFile(name string, b []byte) jobs.File {
	return jobs.File{Name: name, Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func (s *Server) jobStatus(ctx context.Context, req *sdk.CallToolRequest, in JobIDInput) (*sdk.CallToolResult, *JobOutput, error) {
	b, err := s.backendOf(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if err := jobs.CheckJobID(in.JobID); err != nil {
		return nil, nil, fmt.Errorf("job_id: %w", err)
	}
	if in.WaitSeconds < 0 || in.WaitSeconds > defaultStatusWaitLimit.Seconds() {
		return nil, nil, fmt.Errorf("wait_seconds: %g is not from 0 to %g", in.WaitSeconds, defaultStatusWaitLimit.Seconds())
	}
	if in.WaitSeconds == 0 {
		st, err := b.Status(ctx, in.JobID)
		if err != nil {
			return nil, nil, explain(err)
		}
		return s.render(ctx, st)
	}
	return s.await(ctx, b, in.JobID, time.Duration(in.WaitSeconds*float64(time.Second)))
}

func (s *Server) cancelJob(ctx context.Context, req *sdk.CallToolRequest, in JobIDInput) (*sdk.CallToolResult, *CancelOutput, error) {
	b, err := s.backendOf(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if err := jobs.CheckJobID(in.JobID); err != nil {
		return nil, nil, fmt.Errorf("job_id: %w", err)
	}
	out, err := b.Cancel(ctx, in.JobID)
	if err != nil {
		return nil, nil, explain(err)
	}
	s.logger.Info("cancel_job", "job_id", in.JobID, "outcome", out)
	return nil, &CancelOutput{JobID: in.JobID, Outcome: string(out)}, nil
}

// await waits up to wait for a job to end and renders its state: its
// result when it ended, its state and ID otherwise.
func (s *Server) await(ctx context.Context, b backend, id string, wait time.Duration) (*sdk.CallToolResult, *JobOutput, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last *jobs.JobStatus
	st, err := b.Wait(wctx, id, func(st *jobs.JobStatus) { last = st })
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		// The call's wait is over, not the job: it goes on running.
		if last == nil {
			if last, err = b.Status(ctx, id); err != nil {
				return nil, nil, explain(err)
			}
		}
		return s.render(ctx, last)
	}
	if err != nil {
		return nil, nil, explain(err)
	}
	return s.render(ctx, st)
}

// explain turns a refusal into the error an assistant reads: a field at
// fault is named as such.
func explain(err error) error {
	var fe *jobs.FieldError
	var inf *jobs.InputFromError
	switch {
	case errors.As(err, &inf):
		return fmt.Errorf("refused: %w", inf)
	case errors.As(err, &fe):
		return fmt.Errorf("refused: %s: %s", fe.Field, fe.Msg)
	case errors.Is(err, jobs.ErrJobNotFound):
		return errors.New("job not found (the job_id is not one of yours, or its result has expired)")
	}
	return err
}
