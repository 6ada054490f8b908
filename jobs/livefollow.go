package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
)

// Reading a job's live output (livelog.go has the stream's format). A
// follower reads the stream with XREAD every poll interval while the job
// runs, and learns of the job's end from its state: the worker
// writes the attempt's End entry before the result, so in the usual case
// the End entry comes, the done watch wakes the follower as the result is
// written, and the follower stops once it has read the stream to its end.
// A job may also end without a stream (cancelled before it ran) or without
// an End entry (its worker died mid-run): the state alone ends the follow
// then, after a short grace for entries still on their way.
const (
	// liveReadCount is the most entries one XREAD returns.
	liveReadCount = 256
	// liveBlock bounds how long a follower waits between reads of the
	// stream, and goes without reading the job's state: the bound on how
	// late it notices a job that ended without an End entry and whose end
	// it did not hear.
	liveBlock = time.Second
	// liveEndGrace is how long a finished job's stream, whose last entry
	// is not an End, is given for more entries before the follow stops.
	liveEndGrace = time.Second
)

// ErrBadLogCursor is a resume position that is not a stream entry ID.
var ErrBadLogCursor = errors.New("not a position in a job's live output")

// ErrLiveOutput marks an error that came from following a job's live
// output (reading the stream, or the caller's function for its events),
// not from following the job's state: a caller may go on waiting for the
// result without the output.
var ErrLiveOutput = errors.New("live output")

var logCursorPattern = regexp.MustCompile(`^[0-9]{1,20}(-[0-9]{1,20})?$`)

// CheckLogCursor checks a position to resume a job's live output after:
// empty (from the start) or an entry ID (LogEvent.ID, e.g.
// "1733412345678-0").
func CheckLogCursor(after string) error {
	if after == "" || logCursorPattern.MatchString(after) {
		return nil
	}
	return fmt.Errorf("%w: %q (want a live output event's ID, such as 1733412345678-0)", ErrBadLogCursor, after)
}

// Logs calls fn on each event of a job's live output after the entry
// after ("" is from the start), in order. Without follow it returns once
// it has read what the stream holds now. With follow it goes on reading
// as the job writes, and returns once the job is done and its stream read
// to the end. An error of fn stops it and is returned. A job no queue
// holds is ErrJobNotFound; a job whose stream has expired (or that wrote
// nothing) has no events.
func (c *Client) Logs(ctx context.Context, id, after string, follow bool, fn func(LogEvent) error) error {
	return c.logs(ctx, id, nil, after, follow, fn)
}

// Logs is Client.Logs for one of the tenant's jobs; another's is
// ErrJobNotFound.
func (t TenantJobs) Logs(ctx context.Context, id, after string, follow bool, fn func(LogEvent) error) error {
	return t.c.logs(ctx, id, &t.tenant, after, follow, fn)
}

// Follow is Wait with the job's live output: it calls onState (if not
// nil) on every read of the job's state and onLog (if not nil) on each
// event of its live output after the entry after, never both at once,
// and returns when the job is done. The done state comes to onState last,
// after every event of the output. An error from the live output (ErrLiveOutput)
// ends Follow with the last state read; the job goes on.
func (c *Client) Follow(ctx context.Context, id, after string, onState func(*JobStatus), onLog func(LogEvent) error) (*JobStatus, error) {
	return c.follow(ctx, id, nil, after, onState, onLog)
}

// Follow is Client.Follow for one of the tenant's jobs.
func (t TenantJobs) Follow(ctx context.Context, id, after string, onState func(*JobStatus), onLog func(LogEvent) error) (*JobStatus, error) {
	return t.c.follow(ctx, id, &t.tenant, after, onState, onLog)
}

func (c *Client) follow(ctx context.Context, id string, tenant *string, after string, onState func(*JobStatus), onLog func(LogEvent) error) (*JobStatus, error) {
	if err := CheckLogCursor(after); err != nil {
		return nil, err
	}
	w := c.WatchDone(ctx, id)
	defer w.Stop()
	st, err := c.status(ctx, id, tenant)
	if err != nil {
		return nil, err
	}
	// One lock makes the callbacks take turns.
	var mu sync.Mutex
	state := func(st *JobStatus) {
		if onState != nil {
			mu.Lock()
			defer mu.Unlock()
			onState(st)
		}
	}
	// The first state goes out before any output.
	if st.State != StateDone {
		state(st)
	}
	var logsDone chan error
	waitCtx, stopWait := context.WithCancel(ctx)
	defer stopWait()
	if onLog != nil {
		logsDone = make(chan error, 1)
		logCtx, stopLogs := context.WithCancel(ctx)
		exited := make(chan struct{})
		// Follow returns only once onLog can no longer be called: its
		// caller may write to what it is about to give up (an HTTP
		// response).
		defer func() { stopLogs(); <-exited }()
		go func() {
			defer close(exited)
			err := c.logs(logCtx, id, tenant, after, true, func(e LogEvent) error {
				mu.Lock()
				defer mu.Unlock()
				return onLog(e)
			})
			logsDone <- err
			if err != nil {
				// The state is of no use without the output the caller
				// asked for: the wait ends too.
				stopWait()
			}
		}()
	}
	for st.State != StateDone {
		err := w.Next(waitCtx)
		if err == nil {
			var next *JobStatus
			if next, err = c.statusIn(waitCtx, st.Queue, id, tenant); err == nil {
				if st = next; st.State != StateDone {
					state(st)
				}
				continue
			}
		}
		if waitCtx.Err() != nil && ctx.Err() == nil {
			// Only the live output's end stops the wait this way.
			return st, fmt.Errorf("%w of job %s: %w", ErrLiveOutput, id, <-logsDone)
		}
		return st, err
	}
	if logsDone != nil {
		// The follower stops by itself once the stream is read to its end.
		select {
		case err := <-logsDone:
			if err != nil {
				return st, fmt.Errorf("%w of job %s: %w", ErrLiveOutput, id, err)
			}
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
	state(st)
	return st, nil
}

func (c *Client) logs(ctx context.Context, id string, tenant *string, after string, follow bool, fn func(LogEvent) error) error {
	if err := CheckLogCursor(after); err != nil {
		return err
	}
	var w *DoneWatch
	if follow {
		// Watched before the first read of the state, so that an end in
		// between is heard.
		w = c.WatchDone(ctx, id)
		defer w.Stop()
	}
	st, err := c.status(ctx, id, tenant)
	if err != nil {
		return err
	}
	r := &liveReader{c: c, id: id, key: keys.LiveLog(id), cursor: cmp.Or(after, "0"), fn: fn}
	if !follow {
		return r.drain(ctx)
	}
	// The stream is polled, not read with a blocking XREAD: a blocked
	// read holds one of the client's pooled connections, and an API
	// server follows many jobs at once. Between reads the follower waits
	// a poll interval (at most liveBlock), or less when the done watch
	// hears the job's end.
	wait := min(c.cfg.PollInterval, liveBlock)
	lastState := time.Now()
	for {
		if st.State == StateDone {
			return r.finish(ctx)
		}
		n, err := r.read(ctx)
		if err != nil {
			return err
		}
		if n == liveReadCount {
			continue // a backlog: read on
		}
		// The state is read when it may have changed: the attempt's
		// output ended (its result, or a retry, comes next), the job's
		// end was heard (a wake-up pending, or the burst of reads Next
		// starts after one), or liveBlock has passed.
		if r.last.End || len(w.wake) > 0 || w.delay > 0 || time.Since(lastState) >= liveBlock {
			if st, err = c.statusIn(ctx, st.Queue, id, tenant); err != nil {
				return err
			}
			lastState = time.Now()
			if st.State == StateDone {
				continue
			}
		}
		// Next starts its burst of reads when woken.
		nctx, cancel := context.WithTimeout(ctx, wait)
		err = w.Next(nctx)
		cancel()
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// liveReader reads one job's stream from cursor, handing its events to fn.
type liveReader struct {
	c      *Client
	id     string
	key    string
	cursor string
	fn     func(LogEvent) error
	// last is the last event handed to fn.
	last LogEvent
}

// read reads the entries after the cursor (without waiting for any) and
// returns how many it read.
func (r *liveReader) read(ctx context.Context) (int, error) {
	res, err := r.c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{r.key, r.cursor}, Count: liveReadCount, Block: -1}).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the live output of job %s: %w", r.id, redisFailure(err))
	}
	n := 0
	for _, s := range res {
		for _, m := range s.Messages {
			n++
			r.cursor = m.ID
			e, err := DecodeLogEvent(m)
			if err != nil {
				// One bad entry must not stop every follower for good.
				r.c.logger.Warn("skipping an entry of a job's live output", "job_id", r.id, "err", err)
				continue
			}
			if err := ctx.Err(); err != nil {
				return n, err // the rest of a batch is not handed on once stopped
			}
			if err := r.fn(e); err != nil {
				return n, err
			}
			r.last = e
		}
	}
	return n, nil
}

// drain reads every entry the stream holds now.
func (r *liveReader) drain(ctx context.Context) error {
	for {
		n, err := r.read(ctx)
		if err != nil || n < liveReadCount {
			return err
		}
	}
}

// finish reads a finished job's stream to its end: its last entry is the
// final attempt's End. A stream without one is given liveEndGrace for more
// entries (a writer still flushing); a job without a stream has no more.
func (r *liveReader) finish(ctx context.Context) error {
	for graced := false; ; {
		if err := r.drain(ctx); err != nil {
			return err
		}
		tail, err := r.c.rdb.XRevRangeN(ctx, r.key, "+", "-", 1).Result()
		if err != nil {
			return fmt.Errorf("read the live output of job %s: %w", r.id, redisFailure(err))
		}
		if len(tail) == 0 {
			return nil
		}
		if streamIDLess(r.cursor, tail[0].ID) {
			// Entries came after the drain.
			continue
		}
		if e, err := DecodeLogEvent(tail[0]); err == nil && e.End {
			return nil
		}
		if graced {
			return nil
		}
		t := time.NewTimer(liveEndGrace)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		n, err := r.read(ctx)
		if err != nil {
			return err
		}
		graced = n == 0
	}
}

// streamIDLess reports whether stream entry ID a comes before b.
func streamIDLess(a, b string) bool {
	pa, pb := parseStreamID(a), parseStreamID(b)
	if pa[0] != pb[0] {
		return pa[0] < pb[0]
	}
	return pa[1] < pb[1]
}

func parseStreamID(s string) [2]uint64 {
	var p [2]uint64
	fmt.Sscanf(s, "%d-%d", &p[0], &p[1])
	return p
}
