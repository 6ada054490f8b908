package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs"
)

// Error is the body of every refusal: {"error": {...}}.
type Error struct {
	// Code is a stable, machine-readable name of the problem.
	Code string `json:"code"`
	// Message says what is wrong for a person.
	Message string `json:"message"`
	// Field names the part of the request at fault, when there is one.
	Field string `json:"field,omitempty"`
	// JobID names the job a failed submission may still have queued
	// (not_replicated).
	JobID string `json:"job_id,omitempty"`

	status     int
	retryAfter time.Duration
	// close ends the connection after the answer (its body is unread).
	close bool
}

func (e *Error) Error() string { return e.Message }

type errorBody struct {
	Error *Error `json:"error"`
}

func apiError(status int, code, field, msg string) *Error {
	return &Error{Code: code, Message: msg, Field: field, status: status}
}

// classify turns an error from the jobs package into an API error.
func classify(err error) *Error {
	var ae *Error
	var tl *jobs.TooLargeError
	var fe *jobs.FieldError
	var tm *jobs.TooManyOpenError
	var mb *http.MaxBytesError
	var bt *bodyTimeoutError
	var inf *jobs.InputFromError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &bt):
		e := apiError(http.StatusRequestTimeout, "request_timeout", "", bt.Error())
		e.close = true
		return e
	case errors.Is(err, jobs.ErrIdempotencyKeyUnavailable):
		// Said the same way whatever holds the ID: nothing about it. Not
		// a 5xx: a client that retries those would retry the same key.
		return apiError(http.StatusConflict, "idempotency_key_unavailable", "idempotency_key", "the job could not be enqueued under this idempotency key; submit it again with another key")
	case errors.As(err, &mb):
		return apiError(http.StatusRequestEntityTooLarge, "too_large", "", "the request is over "+strconv.FormatInt(mb.Limit, 10)+" bytes, the most a job's files may add up to")
	case errors.As(err, &tl):
		return apiError(http.StatusRequestEntityTooLarge, "too_large", tl.Field, tl.Error())
	case errors.As(err, &fe):
		return apiError(http.StatusBadRequest, "invalid_spec", fe.Field, fe.Error())
	case errors.As(err, &inf):
		// Named, unlike a job read: the submitter gave the ID, and a job
		// of another tenant is refused in the same words as none at all.
		switch {
		case errors.Is(err, jobs.ErrJobNotFound):
			return apiError(http.StatusNotFound, "not_found", "inputs_from", inf.Error())
		case errors.Is(err, jobs.ErrJobNotSucceeded):
			return apiError(http.StatusConflict, "job_not_succeeded", "inputs_from", inf.Error())
		}
		return apiError(http.StatusConflict, "job_not_finished", "inputs_from", inf.Error())
	case errors.As(err, &tm):
		return apiError(http.StatusTooManyRequests, "too_many_pending", "", tm.Error())
	case errors.Is(err, jobs.ErrJobNotFound):
		return apiError(http.StatusNotFound, "not_found", "", "no such job")
	case errors.Is(err, jobs.ErrJobFinished):
		return apiError(http.StatusConflict, "job_finished", "", err.Error())
	case errors.Is(err, jobs.ErrNotReplicated):
		// The job is enqueued but may be lost on a failover: the same
		// idempotency key makes the retry safe; without one, the job's
		// ID lets the client look before it submits again.
		e := apiError(http.StatusServiceUnavailable, "not_replicated", "", err.Error())
		var nr *jobs.NotReplicatedError
		if errors.As(err, &nr) {
			e.JobID = nr.JobID
		}
		return e
	case errors.Is(err, jobs.ErrBadCursor):
		return apiError(http.StatusBadRequest, "invalid_request", "cursor", err.Error())
	case unavailable(err):
		return apiError(http.StatusServiceUnavailable, "unavailable", "", "a service sandq depends on is unavailable, try again: "+err.Error())
	}
	return apiError(http.StatusInternalServerError, "internal", "", err.Error())
}

// unavailable reports whether err comes from Redis or the object store
// being unreachable or overloaded: worth a retry.
func unavailable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, jobs.ErrRedisUnavailable)
}

func writeError(w http.ResponseWriter, e *Error) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.retryAfter+time.Second-1)/time.Second)))
	}
	if e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	if e.close {
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, e.status, errorBody{e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
