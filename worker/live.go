package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
)

// Live output: while a job runs, what it writes is appended to its stream
// in Redis (keys.LiveLog, entries jobs.LogEvent) for whoever follows it.
// The sandbox's pipes are drained into a liveOutput, which only copies
// each chunk into a bounded buffer; a goroutine of its own appends what
// is buffered every liveFlushEvery, or sooner once liveFlushBytes wait.
// What does not fit, past the attempt's cap or because Redis falls
// behind, is dropped and counted in a marker entry: the job never waits
// for Redis.
const (
	// liveBufferBytes bounds the output waiting for Redis (and being
	// sent), with liveEntryOverhead counted for each entry.
	liveBufferBytes = 256 << 10
	// liveFlushEvery is the most a chunk waits before it is sent.
	liveFlushEvery = 100 * time.Millisecond
	// liveFlushBytes wakes the flush before its time.
	liveFlushBytes = 64 << 10
	// liveEntryBytes caps one entry's data: consecutive chunks of a stream
	// are joined up to it.
	liveEntryBytes = 16 << 10
	// liveEntryOverhead is what an entry costs beyond its data in the
	// buffer, so that a job writing a byte at a time, alternating streams,
	// cannot make the buffer hold a million entries.
	liveEntryOverhead = 64
	// liveMarkerEvery spaces the markers of output dropped past the cap,
	// which nothing follows: a job writing on for hours adds one entry
	// every so often, not one per flush. The count is whole at the end.
	liveMarkerEvery = 5 * time.Second
	// liveSendTimeout bounds one flush's round trip.
	liveSendTimeout = 5 * time.Second
)

// liveOutput is one attempt's live output (an executor.LiveOutput).
type liveOutput struct {
	rdb     redis.UniversalClient
	key     string
	attempt int
	// limit is the output the attempt may put in the stream, in bytes.
	limit int64
	// running is the stream's expiry while the attempt runs, so that a
	// stream a dead worker left expires too; ended, once its output is
	// over.
	running, ended time.Duration
	logger         *slog.Logger
	// onDrop hears of every byte dropped (the metric).
	onDrop func(int64)
	// bufferBytes, flushEvery and flushBytes are the constants above
	// (tests change them).
	bufferBytes int
	flushEvery  time.Duration
	flushBytes  int

	mu sync.Mutex
	// pending are the entries waiting to be sent, in order; buffered
	// counts them and those being sent (see liveEntryOverhead).
	pending  []jobs.LogEvent
	buffered int
	// taken is the output put in entries, toward limit; dropped is what
	// was dropped since the last marker.
	taken, dropped int64
	lastMarker     time.Time
	closed         bool
	warned         bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

var _ executor.LiveOutput = (*liveOutput)(nil)

// newLiveOutput starts the live output of attempt n of job: up to limit
// bytes go to its stream, which expires after ended once the attempt's
// output is over and after running until then. Close ends it.
func newLiveOutput(rdb redis.UniversalClient, job string, n int, limit int64, running, ended time.Duration, logger *slog.Logger, onDrop func(int64)) *liveOutput {
	l := &liveOutput{
		rdb: rdb, key: keys.LiveLog(job), attempt: n, limit: limit, running: running, ended: ended, logger: logger, onDrop: onDrop,
		bufferBytes: liveBufferBytes, flushEvery: liveFlushEvery, flushBytes: liveFlushBytes,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	return l
}

// start begins sending.
func (l *liveOutput) start() *liveOutput {
	go l.run()
	return l
}

// Write copies what fits of p into the buffer and counts the rest as
// dropped. It never waits for Redis.
func (l *liveOutput) Write(stream string, p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(p) == 0 {
		return
	}
	for len(p) > 0 {
		last := len(l.pending) - 1
		// After a drop, a marker comes first, saying where in the output
		// the drop was, and the data gets an entry of its own.
		// (An entry with room for less than a character is full.)
		joined := l.dropped == 0 && last >= 0 && l.pending[last].Stream == stream && len(l.pending[last].Data) <= liveEntryBytes-utf8.UTFMax
		room := l.bufferBytes - l.buffered
		if !joined {
			room -= liveEntryOverhead
		}
		if l.dropped > 0 {
			room -= liveEntryOverhead
		}
		n := int(min(int64(len(p)), l.limit-l.taken, int64(max(room, 0))))
		if joined {
			n = min(n, liveEntryBytes-len(l.pending[last].Data))
		} else {
			n = min(n, liveEntryBytes)
		}
		if n < len(p) {
			// An entry ends on a character's boundary: its data goes
			// out as JSON (the API's log events), where half a UTF-8
			// character would become U+FFFD.
			n -= partialRune(p[:n])
		}
		if n <= 0 {
			break
		}
		if l.dropped > 0 {
			l.pending = append(l.pending, jobs.LogEvent{Attempt: l.attempt, Dropped: l.dropped})
			l.buffered += liveEntryOverhead
			l.dropped, l.lastMarker = 0, time.Now()
		}
		if joined {
			l.pending[last].Data += string(p[:n])
		} else {
			l.pending = append(l.pending, jobs.LogEvent{Attempt: l.attempt, Stream: stream, Data: string(p[:n])})
			l.buffered += liveEntryOverhead
		}
		l.buffered += n
		l.taken += int64(n)
		p = p[n:]
	}
	if len(p) > 0 {
		l.dropped += int64(len(p))
		if l.onDrop != nil {
			l.onDrop(int64(len(p)))
		}
	}
	if l.buffered >= l.flushBytes {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// run sends what is buffered every flushEvery, or when woken, until Close.
func (l *liveOutput) run() {
	defer close(l.done)
	tick := time.NewTicker(l.flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		case <-l.wake:
		}
		l.flush(false)
	}
}

// flush sends the pending entries, a marker for output dropped since the
// last one (at most every liveMarkerEvery while the attempt runs), and at
// the end the attempt's End entry; and it sets the stream's expiry. Output
// in entries Redis did not take is counted as dropped.
func (l *liveOutput) flush(end bool) {
	l.mu.Lock()
	batch := l.pending
	l.pending = nil
	// The start of a UTF-8 character whose rest the job has yet to write
	// (or the pipe to hand over) waits for it in an entry of its own,
	// unless the output is over.
	kept := 0
	if last := len(batch) - 1; !end && last >= 0 {
		if k := partialRune([]byte(batch[last].Data)); k > 0 {
			e := batch[last]
			batch[last].Data = e.Data[:len(e.Data)-k]
			l.pending = []jobs.LogEvent{{Attempt: e.Attempt, Stream: e.Stream, Data: e.Data[len(e.Data)-k:]}}
			kept = k + liveEntryOverhead
			l.buffered += liveEntryOverhead
			if batch[last].Data == "" {
				batch = batch[:last]
				l.buffered -= liveEntryOverhead
			}
		}
	}
	if l.dropped > 0 && (end || time.Since(l.lastMarker) >= liveMarkerEvery) {
		batch = append(batch, jobs.LogEvent{Attempt: l.attempt, Dropped: l.dropped})
		l.dropped, l.lastMarker = 0, time.Now()
	}
	inFlight := l.buffered - kept
	l.mu.Unlock()
	if end {
		batch = append(batch, jobs.LogEvent{Attempt: l.attempt, End: true})
	}
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), liveSendTimeout)
	defer cancel()
	pipe := l.rdb.Pipeline()
	adds := make([]*redis.StringCmd, len(batch))
	for i, e := range batch {
		adds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: l.key, Values: e.Values()})
	}
	expiry := l.running
	if end {
		expiry = l.ended
	}
	pipe.PExpire(ctx, l.key, expiry)
	_, err := pipe.Exec(ctx)
	// What Redis did not take is counted again, for a marker once it
	// takes entries again; the metric heard of a lost marker's count
	// already.
	var lostData, lostMarked int64
	for i, c := range adds {
		// A pipeline that could not reach Redis leaves its commands
		// without an error or an ID.
		if c.Err() != nil || c.Val() == "" {
			lostData += int64(len(batch[i].Data))
			lostMarked += batch[i].Dropped
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buffered -= inFlight
	l.dropped += lostData + lostMarked
	if lostData > 0 && l.onDrop != nil {
		l.onDrop(lostData)
	}
	if err != nil && (!l.warned || end) {
		l.warned = true
		l.logger.Warn("appending the job's live output to Redis; what it could not take is dropped and counted", "stream", l.key, "end", end, "err", err)
	}
}

// Close sends what is left, the count of what was dropped and the
// attempt's End entry, and has the stream expire after ended. Output
// written after it is dropped uncounted: the sandbox is gone by then.
func (l *liveOutput) Close() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.flush(true)
	})
}

// followLive has the sandbox's output go to the job's live output stream
// as well, unless the worker's live output is off (nil then; closing nil
// does nothing). The stream expires with the job's result: after the
// task's result retention once the attempt's output is over, and until
// then after the job's timeout, the time allowed to finish, and that.
func (h *Handler) followLive(a *attempt, sb executor.Sandbox) *liveOutput {
	limit := h.cfg.Worker.LiveOutputBytes
	if limit <= 0 {
		return nil
	}
	keep := a.retention
	if keep <= 0 {
		keep = h.cfg.ResultRetention
	}
	running := a.job.Limits.Timeout + h.cfg.FinishAllowance + keep
	l := newLiveOutput(h.rdb, a.job.ID, a.n, limit, running, keep, a.logger, h.metrics.liveDropped).start()
	sb.Follow(l)
	return l
}

// partialRune is how many bytes at the end of p begin a UTF-8 character
// whose rest is missing (0 when p ends on a boundary, or its end cannot
// become UTF-8 whatever follows).
func partialRune(p []byte) int {
	for k := 1; k <= min(utf8.UTFMax-1, len(p)); k++ {
		if utf8.RuneStart(p[len(p)-k]) {
			if utf8.FullRune(p[len(p)-k:]) {
				return 0
			}
			return k
		}
	}
	return 0
}
