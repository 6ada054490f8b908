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
	h := http.Header{}
	if contentType != "" {
		h.Set("Content-Type", contentType)
	}
	return c.requestWith(ctx, method, path, body, h)
}

// requestWith is request with headers of the caller's.
func (c *Client) requestWith(ctx context.Context, method, path string, body io.Reader, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
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
// every state event. A stream that breaks (a server restarting) is
// reopened.
func (c *Client) Wait(ctx context.Context, id string, onState func(*jobs.JobStatus)) (*jobs.JobStatus, error) {
	return c.events(ctx, id, "", true, onState, nil)
}

// Follow is Wait with the job's live output: onLog gets each "log" event
// after the entry after ("" is from the start), in order, and the done
// state comes after the last of them. A stream that breaks is reopened
// where it broke (Last-Event-ID), so no event is missed or repeated. An
// error of onLog ends Follow (jobs.ErrLiveOutput).
func (c *Client) Follow(ctx context.Context, id, after string, onState func(*jobs.JobStatus), onLog func(jobs.LogEvent) error) (*jobs.JobStatus, error) {
	if err := jobs.CheckLogCursor(after); err != nil {
		return nil, err
	}
	return c.events(ctx, id, after, true, onState, onLog)
}

// Logs calls fn on each event of a job's live output after the entry
// after, like jobs.Client.Logs: without follow, the output written so far
// (?follow=false); with follow, until the job is done.
func (c *Client) Logs(ctx context.Context, id, after string, follow bool, fn func(jobs.LogEvent) error) error {
	if err := jobs.CheckLogCursor(after); err != nil {
		return err
	}
	_, err := c.events(ctx, id, after, follow, nil, fn)
	return err
}

// events reads a job's event stream from cursor, reopening it when it
// breaks, until it ends with the job (or, without follow, with the
// state after the output so far).
func (c *Client) events(ctx context.Context, id, cursor string, follow bool, onState func(*jobs.JobStatus), onLog func(jobs.LogEvent) error) (*jobs.JobStatus, error) {
	var last *jobs.JobStatus
	for {
		st, ended, err := c.stream(ctx, id, &cursor, follow, onState, onLog)
		if st != nil {
			last = st
		}
		if err == nil && ended {
			return last, nil
		}
		if ctx.Err() != nil {
			return last, ctx.Err()
		}
		if errors.Is(err, jobs.ErrLiveOutput) {
			return last, err
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

// stream reads one event stream, resuming after *cursor, which it moves
// on with every event's ID. It returns the last state seen, and whether
// the stream ended as it should: with the done event, or (without
// follow) with the state after the output.
func (c *Client) stream(ctx context.Context, id string, cursor *string, follow bool, onState func(*jobs.JobStatus), onLog func(jobs.LogEvent) error) (*jobs.JobStatus, bool, error) {
	path := "/v1/jobs/" + url.PathEscape(id) + "/events"
	if !follow {
		path += "?follow=false"
	}
	h := http.Header{}
	if *cursor != "" {
		h.Set("Last-Event-ID", *cursor)
	}
	resp, err := c.requestWith(ctx, http.MethodGet, path, nil, h)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	var last *jobs.JobStatus
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	event, eventID, data := "", "", &bytes.Buffer{}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			switch event {
			case "state", "done":
				var j Job
				if err := json.Unmarshal(data.Bytes(), &j); err != nil || j.JobStatus == nil {
					return last, false, fmt.Errorf("event stream: bad %s event: %v", event, err)
				}
				last = j.JobStatus
				if onState != nil {
					onState(last)
				}
				if event == "done" || !follow {
					return last, true, nil
				}
			case "log":
				var e jobs.LogEvent
				if err := json.Unmarshal(data.Bytes(), &e); err != nil || e.ID == "" {
					return last, false, fmt.Errorf("event stream: bad log event: %v", err)
				}
				if onLog != nil {
					if err := onLog(e); err != nil {
						return last, false, fmt.Errorf("%w of job %s: %w", jobs.ErrLiveOutput, id, err)
					}
				}
			case "error":
				var eb struct {
					Error Error `json:"error"`
				}
				json.Unmarshal(data.Bytes(), &eb)
				if eb.Error.Code == "not_found" {
					// The job is gone (cancelled before it ran, or past
					// its retention): no reconnection finds it.
					return last, false, &StatusError{Status: http.StatusNotFound, Err: eb.Error}
				}
				return last, false, fmt.Errorf("event stream: %s (%s)", eb.Error.Message, eb.Error.Code)
			}
			// An event's ID is where the stream resumes, once it has
			// been handled.
			if event != "" && eventID != "" {
				*cursor = eventID
			}
			event, eventID = "", ""
			data.Reset()
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "id:"):
			eventID = strings.TrimPrefix(strings.TrimPrefix(line, "id:"), " ")
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return last, false, fmt.Errorf("event stream: %w", err)
	}
	return last, false, errors.New("event stream ended before the job did")
}
