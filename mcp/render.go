package mcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/jobs"
)

// JobOutput is what run_code and run_job_status return as structured
// content: the job's state and, once it ended, its result.
type JobOutput struct {
	JobID string `json:"job_id"`
	// State is pending, scheduled, active, retry or done.
	State string `json:"state"`
	// Status is how the job ended: succeeded, failed, timed_out,
	// out_of_memory, canceled or error.
	Status   string `json:"status,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	// Reason explains every status but succeeded and failed.
	Reason          string `json:"reason,omitempty"`
	DurationMS      int64  `json:"duration_ms,omitempty"`
	Stdout          string `json:"stdout,omitempty"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	Stderr          string `json:"stderr,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	// Outputs are the files the job wrote; each is also in the content:
	// inline (text), as an image, or as a link.
	Outputs []OutputFile `json:"outputs,omitempty"`
	// NetworkRefused are the hosts the job's network policy refused.
	NetworkRefused []Refusal `json:"network_refused,omitempty"`
}

// OutputFile is one output of a job.
type OutputFile struct {
	Path        string `json:"path"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
	// Returned is how the content carries it: text, image or link.
	Returned string `json:"returned"`
	// URL downloads it until the link expires.
	URL string `json:"url"`
}

// Refusal is a host the job asked for that its policy refused.
type Refusal struct {
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Count  int    `json:"count"`
	Reason string `json:"reason"`
}

// imageTypes are the image types returned as image content.
var imageTypes = map[string]bool{"image/png": true, "image/jpeg": true, "image/gif": true, "image/webp": true}

// render makes a call's result of a job's state: a summary, then its
// outputs (text inline, images as images, the rest as links). A job that
// did not succeed is a tool error, so that the assistant sees it failed.
func (s *Server) render(ctx context.Context, st *jobs.JobStatus) (*sdk.CallToolResult, *JobOutput, error) {
	out := &JobOutput{JobID: st.ID, State: string(st.State)}
	if st.State != jobs.StateDone || st.Result == nil {
		text := fmt.Sprintf("Job %s is %s; it goes on running. Call run_job_status with job_id %q (and wait_seconds) for its result, or cancel_job to stop it.", st.ID, st.State, st.ID)
		return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: text}}}, out, nil
	}
	r := st.Result
	out.Status, out.ExitCode, out.Signal, out.Reason, out.DurationMS = string(r.Status), r.ExitCode, r.Signal, r.Reason, r.DurationMS
	if r.Stdout != nil {
		out.Stdout, out.StdoutTruncated = r.Stdout.Tail, r.Stdout.Truncated
	}
	if r.Stderr != nil {
		out.Stderr, out.StderrTruncated = r.Stderr.Tail, r.Stderr.Truncated
	}
	if r.Egress != nil {
		for _, ref := range r.Egress.Refusals {
			out.NetworkRefused = append(out.NetworkRefused, Refusal{Host: ref.Host, Port: ref.Port, Count: ref.Count, Reason: ref.Reason})
		}
	}
	var files []sdk.Content
	inlined := 0
	for _, o := range r.Outputs {
		f := OutputFile{Path: o.Path, Size: o.Size, ContentType: baseType(o.ContentType), URL: o.URL, Returned: "link"}
		if inlined < s.cfg.MaxInlineFiles {
			if c := s.inline(ctx, o, f.ContentType); c != nil {
				f.Returned = map[bool]string{true: "image", false: "text"}[imageTypes[f.ContentType]]
				files = append(files, c)
				inlined++
			}
		}
		if f.Returned == "link" {
			size := o.Size
			files = append(files, &sdk.ResourceLink{URI: o.URL, Name: o.Path, MIMEType: f.ContentType, Size: &size,
				Description: "output of job " + st.ID + "; the link expires " + o.ExpiresAt.UTC().Format("2006-01-02 15:04 MST")})
		}
		out.Outputs = append(out.Outputs, f)
	}
	res := &sdk.CallToolResult{Content: append([]sdk.Content{&sdk.TextContent{Text: summary(out, r)}}, files...)}
	res.IsError = !r.Status.Succeeded()
	return res, out, nil
}

// inline reads a small text output or an image and returns it as content;
// nil when it is neither, too large, or cannot be read (it is then a link).
func (s *Server) inline(ctx context.Context, o jobs.OutputDoc, ct string) sdk.Content {
	isImage := imageTypes[ct]
	limit := s.cfg.MaxInlineBytes
	if isImage {
		limit = s.cfg.MaxImageBytes
	}
	if o.Size > limit || (!isImage && !textType(ct)) {
		return nil
	}
	b, err := s.cfg.Client.Store().Read(ctx, o.Key, limit)
	if err != nil {
		s.logger.Warn("reading an output to return inline; it is returned as a link", "key", o.Key, "err", err)
		return nil
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != o.SHA256 {
		s.logger.Warn("an output's content does not match its recorded sha256; it is returned as a link", "key", o.Key)
		return nil
	}
	if isImage {
		return &sdk.ImageContent{Data: b, MIMEType: ct}
	}
	if !utf8.Valid(b) {
		return nil
	}
	return &sdk.TextContent{Text: fmt.Sprintf("--- output %s (%d bytes) ---\n%s", o.Path, o.Size, b)}
}

// textType reports whether an output is text by its content type.
func textType(ct string) bool {
	switch {
	case strings.HasPrefix(ct, "text/"):
		return true
	case ct == "application/json", ct == "application/xml", ct == "image/svg+xml", ct == "application/javascript", ct == "application/x-ndjson":
		return true
	}
	return false
}

func baseType(ct string) string {
	if t, _, err := mime.ParseMediaType(ct); err == nil {
		return t
	}
	return ct
}

// summary is the result's text: how the job ended, its output tails and
// its network refusals.
func summary(out *JobOutput, r *jobs.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Job %s %s", out.JobID, r.Status)
	if r.ExitCode != nil {
		fmt.Fprintf(&b, " (exit status %d)", *r.ExitCode)
	}
	if r.Signal != "" {
		fmt.Fprintf(&b, " (killed by %s)", r.Signal)
	}
	fmt.Fprintf(&b, " after %.1fs.", float64(r.DurationMS)/1000)
	if r.Reason != "" {
		b.WriteString(" " + r.Reason)
	}
	b.WriteString("\n")
	tail := func(name, text string, truncated bool) {
		if text == "" {
			return
		}
		if truncated {
			name += " (its end only)"
		}
		fmt.Fprintf(&b, "--- %s ---\n%s", name, text)
		if !strings.HasSuffix(text, "\n") {
			b.WriteString("\n")
		}
	}
	tail("stdout", out.Stdout, out.StdoutTruncated)
	tail("stderr", out.Stderr, out.StderrTruncated)
	for _, ref := range out.NetworkRefused {
		host := ref.Host
		if host == "" {
			host = "(a connection)"
		}
		fmt.Fprintf(&b, "network refused: %s:%d (%d times): %s\n", host, ref.Port, ref.Count, ref.Reason)
	}
	if len(out.Outputs) > 0 {
		b.WriteString("outputs:")
		for _, o := range out.Outputs {
			fmt.Fprintf(&b, " %s (%d bytes, %s)", o.Path, o.Size, o.Returned)
		}
		b.WriteString("\n")
	}
	if t := r.Trimmed; t != nil && t.Outputs > 0 {
		n := fmt.Sprintf("%d more outputs are", t.Outputs)
		if t.Outputs == 1 {
			n = "1 more output is"
		}
		fmt.Fprintf(&b, "%s not listed: the result was trimmed to the worker's cap of %s", n, jobs.FormatSize(t.MaxBytes))
		if t.Manifest != nil {
			fmt.Fprintf(&b, "; its manifest lists them all: %s (the link expires %s)", t.Manifest.URL, t.Manifest.ExpiresAt.UTC().Format("2006-01-02 15:04 MST"))
		}
		b.WriteString(".\n")
	}
	return b.String()
}
