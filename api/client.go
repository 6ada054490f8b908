package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sandq/sandq/jobs"
)

// Client is a remote producer: it submits and follows jobs through the
// API, with the same methods as jobs.Client.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// NewClient talks to the API at base (e.g. https://sandq.example:8080)
// with a bearer token.
func NewClient(base, token string) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http(s)://host:port", base)
	}
	if token == "" {
		return nil, errors.New("a server needs a token (--token or SANDQ_TOKEN)")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &Client{base: u, token: token, hc: &http.Client{}}, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// StatusError is a refusal from the server: its status and error body.
type StatusError struct {
	Status int
	Err    Error
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	if e.Err.Field != "" && !strings.HasPrefix(e.Err.Message, e.Err.Field+":") {
		return fmt.Sprintf("%s (%s, HTTP %d): %s", e.Err.Field, e.Err.Code, e.Status, e.Err.Message)
	}
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Err.Message, e.Err.Code, e.Status)
}

// Unwrap maps the statuses callers test for to the jobs package's errors.
func (e *StatusError) Unwrap() error {
	switch e.Status {
	case http.StatusNotFound:
		return jobs.ErrJobNotFound
	case http.StatusConflict:
		switch e.Err.Code {
		case "job_finished":
			return jobs.ErrJobFinished
		case "job_not_finished":
			return jobs.ErrJobNotFinished
		case "job_not_succeeded":
			return jobs.ErrJobNotSucceeded
		}
	}
	return nil
}

func (c *Client) request(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var eb struct {
			Error Error `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error.Code == "" {
			eb.Error = Error{Code: "http", Message: strings.TrimSpace(string(b))}
		}
		se := &StatusError{Status: resp.StatusCode, Err: eb.Error}
		if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n > 0 {
			se.RetryAfter = time.Duration(n) * time.Second
		}
		return nil, se
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, method, path string, v any) error {
	resp, err := c.request(ctx, method, path, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

// Enqueue streams the submission's files to the server as one multipart
// request, never holding a whole file in memory.
func (c *Client) Enqueue(ctx context.Context, s jobs.Submission) (*jobs.Enqueued, error) {
	spec, err := json.Marshal(Spec{
		Runtime: s.Runtime, Args: s.Args, Env: s.Env, Limits: s.Limits, Network: s.Network,
		Webhook: s.Webhook, Queue: s.Queue, IdempotencyKey: s.IdempotencyKey, Image: s.Image,
		InputsFrom: s.InputsFrom,
	})
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		pw.CloseWithError(writeSubmission(mw, spec, s))
	}()
	resp, err := c.request(ctx, http.MethodPost, "/v1/jobs", pr, mw.FormDataContentType())
	pr.Close()
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var j Job
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil || j.JobStatus == nil {
		return nil, fmt.Errorf("POST /v1/jobs: bad answer: %v", err)
	}
	return &jobs.Enqueued{ID: j.ID, Queue: j.Queue, Existing: j.Existing}, nil
}

func writeSubmission(mw *multipart.Writer, spec []byte, s jobs.Submission) error {
	w, err := mw.CreateFormField(partSpec)
	if err != nil {
		return err
	}
	if _, err := w.Write(spec); err != nil {
		return err
	}
	files := append([]jobs.File{s.Script}, s.Inputs...)
	for i, f := range files {
		part := partInput
		if i == 0 {
			part = partScript
		}
		w, err := mw.CreateFormFile(part, f.Name)
		if err != nil {
			return err
		}
		r, err := f.Open()
		if err != nil {
			return fmt.Errorf("open %s: %w", f.Name, err)
		}
		_, err = io.Copy(w, r)
		r.Close()
		if err != nil {
			return err
		}
	}
	return mw.Close()
}

// Status returns a job's state and, once done, its result.
func (c *Client) Status(ctx context.Context, id string) (*jobs.JobStatus, error) {
	var j Job
	if err := c.getJSON(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), &j); err != nil {
		return nil, err
	}
	return j.JobStatus, nil
}

// Cancel cancels a job.
func (c *Client) Cancel(ctx context.Context, id string) (jobs.CancelOutcome, error) {
	var r CancelResponse
	if err := c.getJSON(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/cancel", &r); err != nil {
		return "", err
	}
	return r.Outcome, nil
}

// List returns a page of the tenant's jobs.
func (c *Client) List(ctx context.Context, f jobs.ListFilter) (*JobList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"queue": f.Queue, "state": string(f.State), "cursor": f.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Limit > 0 {
		q.Set("limit", fmt.Sprint(f.Limit))
	}
	var l JobList
	if err := c.getJSON(ctx, http.MethodGet, "/v1/jobs?"+q.Encode(), &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// Wait follows a job's event stream until it is done, calling onState on
// every event. A stream that breaks (a server restarting) is reopened.
func (c *Client) Wait(ctx context.Context, id string, onState func(*jobs.JobStatus)) (*jobs.JobStatus, error) {
	var last *jobs.JobStatus
	for {
		st, err := c.follow(ctx, id, onState)
		if st != nil {
			last = st
		}
		if err == nil && last != nil && last.State == jobs.StateDone {
			return last, nil
		}
		if ctx.Err() != nil {
			return last, ctx.Err()
		}
		// A refusal is final, but for a server that is overloaded, has
		// lost Redis for a moment, or has the tenant at its rate or its
		// cap of event streams: those are retried when the server says.
		var se *StatusError
		if errors.As(err, &se) && se.Status != http.StatusServiceUnavailable && se.Status != http.StatusTooManyRequests {
			return last, err
		}
		wait := time.Second
		if se != nil && se.RetryAfter > wait {
			wait = min(se.RetryAfter, 30*time.Second)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// follow reads one event stream; it returns the last state seen.
func (c *Client) follow(ctx context.Context, id string, onState func(*jobs.JobStatus)) (*jobs.JobStatus, error) {
	resp, err := c.request(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id)+"/events", nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var last *jobs.JobStatus
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	event, data := "", &bytes.Buffer{}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			switch event {
			case "state", "done":
				var j Job
				if err := json.Unmarshal(data.Bytes(), &j); err != nil || j.JobStatus == nil {
					return last, fmt.Errorf("event stream: bad %s event: %v", event, err)
				}
				last = j.JobStatus
				if onState != nil {
					onState(last)
				}
				if event == "done" {
					return last, nil
				}
			case "error":
				var eb struct {
					Error Error `json:"error"`
				}
				json.Unmarshal(data.Bytes(), &eb)
				return last, fmt.Errorf("event stream: %s (%s)", eb.Error.Message, eb.Error.Code)
			}
			event = ""
			data.Reset()
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("event stream: %w", err)
	}
	return last, errors.New("event stream ended before the job did")
}
