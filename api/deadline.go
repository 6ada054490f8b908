package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/sandq/sandq/jobs"
)

// Timeouts bound how long the server waits on a slow client, per request,
// so that uploads and event streams may last as long as they need while a
// client that stalls or trickles is cut. Zero fields take their defaults.
type Timeouts struct {
	// BodyIdle cuts a request whose body makes no progress (no byte
	// arrives) for this long: 408. Default 1m.
	BodyIdle time.Duration
	// Body cuts a request whose body has not all arrived this long after
	// the request began, however steadily it trickles: 408. Default 1h; at
	// most jobs.ReservationTTL (2h), how long a submission keeps its place
	// among its tenant's unfinished jobs.
	Body time.Duration
	// Write bounds writing a response, from its first byte: a client that
	// does not read it is cut. Event streams instead bound each write
	// (StreamWrite). Default 1m.
	Write time.Duration
	// StreamWrite bounds each write of an event stream (an event or a
	// keep-alive). Default 30s.
	StreamWrite time.Duration
}

// Defaults of Timeouts.
const (
	DefaultBodyIdleTimeout    = time.Minute
	DefaultBodyTimeout        = time.Hour
	DefaultWriteTimeout       = time.Minute
	DefaultStreamWriteTimeout = 30 * time.Second
)

func (t Timeouts) withDefaults() Timeouts {
	for _, f := range []struct {
		v *time.Duration
		d time.Duration
	}{{&t.BodyIdle, DefaultBodyIdleTimeout}, {&t.Body, DefaultBodyTimeout}, {&t.Write, DefaultWriteTimeout}, {&t.StreamWrite, DefaultStreamWriteTimeout}} {
		if *f.v == 0 {
			*f.v = f.d
		}
	}
	return t
}

// MaxStreamWriteTimeout bounds Timeouts.StreamWrite: an event stream
// blocked in a write cannot renew its lease under the tenant's stream cap.
const MaxStreamWriteTimeout = time.Minute

func (t Timeouts) validate() error {
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"body idle timeout", t.BodyIdle}, {"body timeout", t.Body}, {"write timeout", t.Write}, {"stream write timeout", t.StreamWrite}} {
		if f.v < 0 {
			return fmt.Errorf("%s %s is negative", f.name, f.v)
		}
	}
	if t.Body > jobs.ReservationTTL {
		return fmt.Errorf("body timeout %s is over the maximum of %s (how long a submission keeps its place among its tenant's unfinished jobs)", t.Body, jobs.ReservationTTL)
	}
	if t.StreamWrite > MaxStreamWriteTimeout {
		return fmt.Errorf("stream write timeout %s is over the maximum of %s (an open stream must renew its place under its tenant's stream cap)", t.StreamWrite, MaxStreamWriteTimeout)
	}
	if t.BodyIdle > t.Body {
		return fmt.Errorf("body idle timeout %s is over the body timeout %s", t.BodyIdle, t.Body)
	}
	return nil
}

// bodyTimeoutError is a request body that stalled or took too long.
type bodyTimeoutError struct {
	idle bool
	d    time.Duration
}

func (e *bodyTimeoutError) Error() string {
	if e.idle {
		return fmt.Sprintf("no byte of the request body arrived for %s; the request is cut", e.d)
	}
	return fmt.Sprintf("the request body did not arrive in full within %s; the request is cut", e.d)
}

// deadlineBody reads a request body under per-read deadlines on the
// connection: each read waits at most idle for a byte, and none goes past
// the request's end (its start plus the body timeout).
type deadlineBody struct {
	body io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time
	all  time.Duration
	err  error
}

type bodyKey struct{}

// bodyTimeout returns the timeout that cut a request's body, if one did.
// Readers above the body (multipart, the object store's client) may wrap
// or flatten the error; this is where its cause is kept.
func bodyTimeout(ctx context.Context) error {
	if b, ok := ctx.Value(bodyKey{}).(*deadlineBody); ok && b.err != nil {
		return b.err
	}
	return nil
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	now := time.Now()
	if !now.Before(b.end) {
		b.err = &bodyTimeoutError{d: b.all}
		return 0, b.err
	}
	deadline := now.Add(b.idle)
	if deadline.After(b.end) {
		deadline = b.end
	}
	if err := b.rc.SetReadDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := b.body.Read(p)
	var ne net.Error
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		if deadline.Equal(b.end) {
			b.err = &bodyTimeoutError{d: b.all}
		} else {
			b.err = &bodyTimeoutError{idle: true, d: b.idle}
		}
		return n, b.err
	default:
		// The body has ended (or broken): the connection has no read
		// deadline from here, so the server's own read that notices a
		// client going away does not time out while the handler works.
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.body.Close() }

// deadlineWriter gives a response its write deadline when it starts.
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	d       time.Duration
	started bool
}

func (w *deadlineWriter) start() {
	if !w.started {
		w.started = true
		w.rc.SetWriteDeadline(time.Now().Add(w.d))
	}
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.start()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.start()
	return w.ResponseWriter.Write(b)
}

func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withDeadlines serves a request under the timeouts.
func (s *Server) withDeadlines(w http.ResponseWriter, r *http.Request, h http.Handler) {
	rc := http.NewResponseController(w)
	// A deadline an earlier request on the connection set does not carry
	// over: this response's starts with its first byte.
	rc.SetWriteDeadline(time.Time{})
	if r.Body != nil && r.Body != http.NoBody {
		now := time.Now()
		b := &deadlineBody{body: r.Body, rc: rc, idle: s.timeouts.BodyIdle, end: now.Add(s.timeouts.Body), all: s.timeouts.Body}
		r.Body = b
		r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, b))
	}
	h.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: rc, d: s.timeouts.Write}, r)
	// What the server still has to send once the handler returns (its
	// buffer) is bounded too.
	rc.SetWriteDeadline(time.Now().Add(s.timeouts.Write))
}
