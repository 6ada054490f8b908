package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sandq/sandq/jobs"
)

// Spec is the "spec" part of a submission: everything but the files.
type Spec struct {
	Runtime        string            `json:"runtime,omitempty"`
	Args           []string          `json:"args,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Limits         jobs.LimitRequest `json:"limits,omitzero"`
	Network        []string          `json:"network,omitempty"`
	Webhook        string            `json:"webhook,omitempty"`
	Queue          string            `json:"queue,omitempty"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	Image          string            `json:"image,omitempty"`
	// InputsFrom takes outputs of the tenant's finished jobs as inputs.
	InputsFrom []jobs.InputFrom `json:"inputs_from,omitempty"`
}

// Part names of a submission.
const (
	partSpec   = "spec"
	partScript = "script"
	partInput  = "input"
)

// maxSpecBytes caps the spec part.
const maxSpecBytes = 1 << 20

// Job is a job as the API shows it: jobs.JobStatus plus whether a
// submission found it by its idempotency key.
type Job struct {
	*jobs.JobStatus
	Existing bool `json:"existing,omitempty"`
}

// submit handles POST /v1/jobs: a multipart/form-data body whose parts are
// the spec (JSON, first, optional), the script (one file) and inputs (file
// parts named "input"). Files stream to the store as they arrive; a cap
// passed, a bad part or a lost connection removes what was uploaded.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, p *principal) {
	// The body may hold the job's files and a little more: the spec and
	// each part's headers.
	limit := s.jobs.MaxScriptBytes + s.jobs.MaxInputsTotal + maxSpecBytes + int64(s.jobs.MaxInputs+1)*8<<10
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr, recent, boundary, ok := multipartReader(r)
	if !ok {
		writeError(w, apiError(http.StatusBadRequest, "invalid_request", "", "the body must be multipart/form-data: a \"spec\" JSON part, a \"script\" file part and \"input\" file parts"))
		return
	}
	ctx := r.Context()
	view := s.client.Tenant(p.tenant)
	var (
		spec  Spec
		draft *jobs.Draft
	)
	begin := func() *Error {
		sub := jobs.Submission{
			Runtime: spec.Runtime, Args: spec.Args, Env: spec.Env, Limits: spec.Limits, Network: spec.Network,
			Webhook: spec.Webhook, Queue: spec.Queue, IdempotencyKey: spec.IdempotencyKey, Image: spec.Image,
			Tenant: p.tenant, MaxOpen: p.maxOpen(),
		}
		if sub.Queue == "" {
			sub.Queue = s.jobs.Queue
		}
		if !p.mayUse(sub.Queue) {
			return apiError(http.StatusForbidden, "forbidden", "queue", fmt.Sprintf("tenant %s may not use queue %q", p.tenant, sub.Queue))
		}
		d, existing, err := s.client.Begin(ctx, sub)
		if err != nil {
			return classify(err)
		}
		if existing != nil {
			// The tenant's own job (Begin checked, and the view checks
			// again): a key's ID includes its tenant.
			st, err := view.StatusIn(ctx, existing.Queue, existing.ID)
			if err != nil {
				return classify(err)
			}
			w.Header().Set("Location", "/v1/jobs/"+st.ID)
			writeJSON(w, http.StatusOK, Job{JobStatus: st, Existing: true})
			return &Error{} // answered: fail writes nothing more
		}
		draft = d
		// Before any file: a refused entry (a job not found or not
		// finished, a glob matching nothing) refuses the submission
		// before its files are read.
		if err := d.AddInputsFrom(ctx, spec.InputsFrom); err != nil {
			return classify(err)
		}
		return nil
	}
	fail := func(e *Error) {
		if draft != nil {
			draft.Abort(ctx)
		}
		if terr := bodyTimeout(ctx); terr != nil && e.status != 0 {
			// Whatever read the body saw it cut.
			e = classify(terr)
		}
		if e.status != 0 {
			writeError(w, e)
		}
	}
	// started begins the draft at the first file (or at the end, for a
	// body without files); false means the request is answered: refused,
	// or with the existing job of its idempotency key.
	started := func() bool {
		if draft != nil {
			return true
		}
		if e := begin(); e != nil {
			fail(e)
			return false
		}
		return true
	}
	seenSpec := false
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		var perr textproto.ProtocolError
		if errors.As(err, &perr) {
			fail(malformedPart(err, refusedPartName(recent.recent(), boundary, perr)))
			return
		}
		if err != nil {
			fail(classifyBody(err))
			return
		}
		name, filename := partNames(part)
		switch {
		case name == partSpec:
			if seenSpec || draft != nil {
				fail(apiError(http.StatusBadRequest, "invalid_request", partSpec, "the spec part must come once, before any file"))
				return
			}
			seenSpec = true
			if e := readSpec(part, &spec); e != nil {
				fail(e)
				return
			}
		case name == partScript || name == partInput:
			if filename == "" {
				fail(apiError(http.StatusBadRequest, "invalid_request", name, fmt.Sprintf("the %q part has no filename", name)))
				return
			}
			if !started() {
				return
			}
			add := draft.AddInput
			if name == partScript {
				add = draft.AddScript
			}
			if err := add(ctx, filename, part, -1); err != nil {
				fail(classifyBody(err))
				return
			}
		default:
			fail(apiError(http.StatusBadRequest, "invalid_request", name, fmt.Sprintf("unknown part %q (want spec, script, input)", name)))
			return
		}
	}
	if !started() {
		return
	}
	enq, err := draft.Commit(ctx)
	if err != nil {
		writeError(w, classify(err))
		return
	}
	st, err := view.StatusIn(ctx, enq.Queue, enq.ID)
	if err != nil {
		writeError(w, classify(err))
		return
	}
	status := http.StatusCreated
	if enq.Existing {
		status = http.StatusOK
	}
	w.Header().Set("Location", "/v1/jobs/"+enq.ID)
	writeJSON(w, status, Job{JobStatus: st, Existing: enq.Existing})
}

// classifyBody is classify for errors reading the request body: a body
// over its cap is 413, a broken one 400.
func classifyBody(err error) *Error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return classify(err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(err.Error(), "multipart") {
		return apiError(http.StatusBadRequest, "invalid_request", "", "the multipart body is broken: "+err.Error())
	}
	return classify(err)
}

// partNames returns a part's form name and its file name exactly as sent:
// multipart.Part.FileName keeps only the base name, which would turn
// "../x" into "x" rather than refuse it.
func partNames(p *multipart.Part) (string, string) {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return p.FormName(), ""
	}
	return params["name"], params["filename"]
}

func readSpec(r io.Reader, spec *Spec) *Error {
	b, err := io.ReadAll(io.LimitReader(r, maxSpecBytes+1))
	if err != nil {
		return classifyBody(err)
	}
	if len(b) > maxSpecBytes {
		return apiError(http.StatusRequestEntityTooLarge, "too_large", partSpec, fmt.Sprintf("the spec is over %d bytes", maxSpecBytes))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		field := partSpec
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			field = te.Field
		} else if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			field = strings.Trim(f, `"`)
		}
		return apiError(http.StatusBadRequest, "invalid_spec", field, "the spec is not valid: "+err.Error())
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, "invalid_spec", partSpec, "the spec holds more than one JSON value")
	}
	return nil
}

// jobOf finds a job of the principal's tenant; other tenants' jobs are not
// found, so that an ID tells nothing about who owns it.
func (s *Server) jobOf(ctx context.Context, p *principal, id string) (*jobs.JobStatus, *Error) {
	if jobs.CheckJobID(id) != nil {
		return nil, classify(jobs.ErrJobNotFound)
	}
	st, err := s.client.Tenant(p.tenant).Status(ctx, id)
	if err != nil {
		return nil, classify(err)
	}
	return st, nil
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request, p *principal) {
	st, e := s.jobOf(r.Context(), p, r.PathValue("id"))
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, http.StatusOK, Job{JobStatus: st})
}

// JobList is a page of jobs.
type JobList struct {
	Jobs []*jobs.JobStatus `json:"jobs"`
	// NextCursor continues the listing; empty at the end.
	NextCursor string `json:"next_cursor,omitempty"`
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, p *principal) {
	q := r.URL.Query()
	f := jobs.ListFilter{Queue: q.Get("queue"), State: jobs.State(q.Get("state")), Cursor: q.Get("cursor"), Limit: 50}
	if f.Queue != "" {
		if err := jobs.CheckQueue(f.Queue); err != nil {
			writeError(w, apiError(http.StatusBadRequest, "invalid_request", "queue", err.Error()))
			return
		}
	}
	switch f.State {
	case "", jobs.StatePending, jobs.StateScheduled, jobs.StateActive, jobs.StateRetry, jobs.StateDone:
	default:
		writeError(w, apiError(http.StatusBadRequest, "invalid_request", "state", fmt.Sprintf("unknown state %q (want pending, scheduled, active, retry or done)", f.State)))
		return
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 500 {
			writeError(w, apiError(http.StatusBadRequest, "invalid_request", "limit", "limit must be a number from 1 to 500"))
			return
		}
		f.Limit = n
	}
	list, next, err := s.client.Tenant(p.tenant).List(r.Context(), f)
	if err != nil {
		writeError(w, classify(err))
		return
	}
	writeJSON(w, http.StatusOK, JobList{Jobs: list, NextCursor: next})
}

// CancelResponse says what a cancel did (see jobs.CancelOutcome).
type CancelResponse struct {
	ID      string             `json:"id"`
	Outcome jobs.CancelOutcome `json:"outcome"`
}

func (s *Server) cancelJob(w http.ResponseWriter, r *http.Request, p *principal) {
	st, e := s.jobOf(r.Context(), p, r.PathValue("id"))
	if e != nil {
		writeError(w, e)
		return
	}
	out, err := s.client.Tenant(p.tenant).Cancel(r.Context(), st.ID)
	if err != nil {
		writeError(w, classify(err))
		return
	}
	writeJSON(w, http.StatusAccepted, CancelResponse{ID: st.ID, Outcome: out})
}

// events streams a job as Server-Sent Events: a "state" event with the
// job (as GET shows it) on every change, "log" events with its live
// output as the job writes it (jobs.LogEvent, each with its stream entry
// ID as the event's ID), and a final "done" event with its result, after
// every "log" event, after which the stream ends. The job's state is read
// every poll interval, and at once when the worker announces the job's
// end (jobs.Client.WatchDone), so "done" follows the result without a
// poll's delay. Every event's ID is the position in the live output
// reached so far ("0" before any), so a client that reconnects with
// Last-Event-ID (or ?after=) gets the job's current state and the output
// it missed, whichever event it saw last. With ?follow=false the stream
// holds the output written so far, then the job's state, and ends. A
// comment line every 15s keeps proxies from closing an idle stream. Each
// tenant has at most MaxStreams streams open (429 too_many_streams), and
// each write must reach the client within the stream write timeout, or
// the stream ends.
func (s *Server) events(w http.ResponseWriter, r *http.Request, p *principal) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	view := s.client.Tenant(p.tenant)
	after, follow, e := eventsQuery(r)
	if e != nil {
		writeError(w, e)
		return
	}
	st, e := s.jobOf(ctx, p, r.PathValue("id"))
	if e != nil {
		writeError(w, e)
		return
	}
	slot, e := s.openStream(ctx, p)
	if e != nil {
		writeError(w, e)
		return
	}
	defer slot.release(ctx)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	// send writes and flushes under the per-write deadline; the stream
	// ends at the first write that fails. The keep-alive writes from
	// their own goroutine, hence the lock.
	var mu sync.Mutex
	lastWrite := time.Now()
	send := func(format string, args ...any) error {
		mu.Lock()
		defer mu.Unlock()
		rc.SetWriteDeadline(time.Now().Add(s.timeouts.StreamWrite))
		_, err := fmt.Fprintf(w, format, args...)
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			cancel()
		}
		lastWrite = time.Now()
		return err
	}
	// The callbacks below take turns (jobs.Client.Follow).
	cursor := cmp.Or(after, "0")
	var last []byte
	sendState := func(st *jobs.JobStatus) {
		b, _ := json.Marshal(Job{JobStatus: st})
		event := "state"
		if st.State == jobs.StateDone {
			event = "done"
		}
		if !bytes.Equal(b, last) {
			last = b
			send("id: %s\nevent: %s\ndata: %s\n\n", cursor, event, b)
		}
	}
	sendLog := func(ev jobs.LogEvent) error {
		b, _ := json.Marshal(ev)
		cursor = ev.ID
		return send("id: %s\nevent: log\ndata: %s\n\n", ev.ID, b)
	}
	sendError := func(err error) {
		if ctx.Err() == nil {
			b, _ := json.Marshal(errorBody{classify(err)})
			send("event: error\ndata: %s\n\n", b)
		}
	}
	w.WriteHeader(http.StatusOK)
	if !follow {
		err := view.Logs(ctx, st.ID, after, false, sendLog)
		if err == nil {
			st, err = view.StatusIn(ctx, st.Queue, st.ID)
		}
		if err != nil {
			sendError(err)
			return
		}
		sendState(st)
		return
	}
	// The keep-alive ends before the handler returns: nothing may write
	// to w after that.
	keepAlive := make(chan struct{})
	defer func() {
		cancel()
		<-keepAlive
	}()
	go func() {
		defer close(keepAlive)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			slot.renew(ctx)
			mu.Lock()
			idle := time.Since(lastWrite)
			mu.Unlock()
			if idle > 15*time.Second {
				send(": keep-alive\n\n")
			}
		}
	}()
	if _, err := view.Follow(ctx, st.ID, after, sendState, sendLog); err != nil {
		sendError(err)
	}
}

// eventsQuery reads where an event stream resumes (the Last-Event-ID
// header a reconnecting client sends, else ?after=) and whether it
// follows the job (?follow=, default true).
func eventsQuery(r *http.Request) (after string, follow bool, e *Error) {
	q := r.URL.Query()
	field, after := "after", q.Get("after")
	if h := r.Header.Get("Last-Event-ID"); h != "" {
		field, after = "Last-Event-ID", h
	}
	if err := jobs.CheckLogCursor(after); err != nil {
		return "", false, apiError(http.StatusBadRequest, "invalid_request", field, field+": "+err.Error())
	}
	switch q.Get("follow") {
	case "", "true":
		follow = true
	case "false":
	default:
		return "", false, apiError(http.StatusBadRequest, "invalid_request", "follow", fmt.Sprintf("follow: %q is neither true nor false", q.Get("follow")))
	}
	return after, follow, nil
}
