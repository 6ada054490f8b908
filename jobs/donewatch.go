package jobs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
)

// A worker publishes a job's ID on keys.DoneChannel once the job's final
// result is written, right before its handler returns; asynq marks the
// task completed (or archived) only after that. A waiter that hears the
// message therefore reads the job's state again in a short burst, at once
// and then after doneBurstFirst, doubling up to doneBurstMax, until the
// job shows done or doneBurstSpan has passed. The gaps are short because
// the bench times a job's end by this read; asynq normally marks the task
// a millisecond or two after the message, so a burst is a few reads. The
// span bounds the reads when it does not (the worker died in between:
// asynq hands the job to another worker, whose message comes later).
// Pub/sub is at most once (a message sent while the subscription
// reconnects is lost), so a waiter also reads the state every
// Config.PollInterval whatever it hears.
const (
	doneBurstFirst = time.Millisecond
	doneBurstMax   = 2 * time.Millisecond
	doneBurstSpan  = time.Second
)

// doneRecentSpan is how long the watcher remembers the IDs it heard. A
// waiter that starts within it after its job's message (the job ended as
// the waiter began, before asynq marked the task completed) is woken at
// once instead of at its next fallback read.
const doneRecentSpan = 5 * time.Second

// doneWatcher is a Client's one subscription to keys.DoneChannel, started
// by the first waiter and ended by Close, fanning messages out to the
// waiters of each job.
type doneWatcher struct {
	rdb    redis.UniversalClient
	logger *slog.Logger

	// starting serializes subscribing, which runs outside mu.
	starting sync.Mutex

	mu      sync.Mutex
	closed  bool
	sub     *redis.PubSub
	stopped chan struct{} // closed when the fan-out goroutine ends
	waiters map[string]map[*DoneWatch]struct{}
	// recent and older are the IDs heard in the current and the previous
	// doneRecentSpan (two generations: a lookup checks both, and the older
	// is dropped whole).
	recent, older map[string]struct{}
	rotated       time.Time
	warned        bool
}

func newDoneWatcher(rdb redis.UniversalClient, logger *slog.Logger) *doneWatcher {
	return &doneWatcher{rdb: rdb, logger: logger, waiters: map[string]map[*DoneWatch]struct{}{}, recent: map[string]struct{}{}}
}

// DoneWatch hears when one job's final result is written, and paces the
// reads of its state (Next). It is for one goroutine, but for Stop.
type DoneWatch struct {
	d        *doneWatcher
	id       string
	wake     chan struct{}
	fallback time.Duration
	// delay is the wait before the next read of a burst (0: no burst);
	// burstEnd is when the burst gives way to the fallback reads.
	delay    time.Duration
	burstEnd time.Time
	stopOnce sync.Once
}

// WatchDone starts hearing of job id's completion. Call it before reading
// the job's state the first time, so that a completion in between is not
// missed, and Stop it when done. When Redis refuses the subscription (a
// Redis ACL without the channel, say), the watch still paces reads every
// Config.PollInterval: waiting then only takes longer.
func (c *Client) WatchDone(ctx context.Context, id string) *DoneWatch {
	w := &DoneWatch{d: c.done, id: id, wake: make(chan struct{}, 1), fallback: c.cfg.PollInterval}
	c.done.add(w)
	if err := c.done.start(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errDoneWatcherClosed) {
		c.done.mu.Lock()
		first := !c.done.warned
		c.done.warned = true
		c.done.mu.Unlock()
		level := slog.LevelDebug
		if first {
			level = slog.LevelWarn
		}
		c.logger.Log(ctx, level, "cannot hear jobs' completion; waiting by polling only", "interval", c.cfg.PollInterval, "err", err)
	}
	return w
}

// Next waits until the job's state is worth reading again: right after
// its completion message, then in a short burst of reads (asynq marks the
// task completed only once the worker's handler has returned), otherwise
// every Config.PollInterval. It returns ctx's error when ctx ends first.
func (w *DoneWatch) Next(ctx context.Context) error {
	wait := w.fallback
	if w.delay > 0 {
		if time.Now().Before(w.burstEnd) {
			wait = w.delay
			w.delay = min(2*w.delay, doneBurstMax)
		} else {
			w.delay = 0
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-w.wake:
		if w.delay == 0 {
			w.delay, w.burstEnd = doneBurstFirst, time.Now().Add(doneBurstSpan)
		}
		return nil
	case <-t.C:
		return nil
	}
}

// Stop ends the watch. It may be called more than once.
func (w *DoneWatch) Stop() { w.stopOnce.Do(func() { w.d.remove(w) }) }

// add registers w, and wakes it at once if its job's message was heard a
// moment ago.
func (d *doneWatcher) add(w *DoneWatch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := d.waiters[w.id]
	if set == nil {
		set = map[*DoneWatch]struct{}{}
		d.waiters[w.id] = set
	}
	set[w] = struct{}{}
	_, heard := d.recent[w.id]
	if _, older := d.older[w.id]; heard || older {
		w.signal()
	}
}

func (d *doneWatcher) remove(w *DoneWatch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := d.waiters[w.id]
	delete(set, w)
	if len(set) == 0 {
		delete(d.waiters, w.id)
	}
}

func (w *DoneWatch) signal() {
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// start subscribes, unless the subscription is running already, and
// returns once Redis has confirmed it: from then on no message is missed
// but for a connection loss.
func (d *doneWatcher) start(ctx context.Context) error {
	d.starting.Lock()
	defer d.starting.Unlock()
	d.mu.Lock()
	running, closed := d.sub != nil, d.closed
	d.mu.Unlock()
	if running {
		return nil
	}
	if closed {
		return errDoneWatcherClosed
	}
	sub := d.rdb.Subscribe(ctx, keys.DoneChannel)
	if _, err := sub.Receive(ctx); err != nil {
		sub.Close()
		return err
	}
	ch := sub.ChannelWithSubscriptions()
	stopped := make(chan struct{})
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		sub.Close()
		return errDoneWatcherClosed
	}
	d.sub, d.stopped = sub, stopped
	go d.fanOut(sub, ch, stopped)
	return nil
}

// fanOut delivers each message to its job's waiters until the
// subscription is closed.
func (d *doneWatcher) fanOut(sub *redis.PubSub, ch <-chan any, stopped chan struct{}) {
	defer close(stopped)
	for m := range ch {
		switch m := m.(type) {
		case *redis.Message:
			d.heard(m.Payload)
		case *redis.Subscription:
			// go-redis subscribed again after a lost connection: messages
			// sent meanwhile are lost, so every waiter reads its job's
			// state now rather than at its next fallback read.
			if m.Kind == "subscribe" {
				d.logger.Debug("resubscribed to jobs' completion; every waiter reads its job again", "channel", m.Channel)
				d.wakeAll()
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sub == sub {
		// Closed under us: the next waiter subscribes again.
		d.sub = nil
	}
}

func (d *doneWatcher) heard(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := time.Now(); now.Sub(d.rotated) > doneRecentSpan {
		d.older, d.recent, d.rotated = d.recent, map[string]struct{}{}, now
	}
	d.recent[id] = struct{}{}
	for w := range d.waiters[id] {
		w.signal()
	}
}

func (d *doneWatcher) wakeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, set := range d.waiters {
		for w := range set {
			w.signal()
		}
	}
}

// close ends the subscription and waits (a few seconds at most) for its
// goroutine to end. Waiters left go on with their fallback reads.
func (d *doneWatcher) close() {
	d.mu.Lock()
	d.closed = true
	sub, stopped := d.sub, d.stopped
	d.sub = nil
	d.mu.Unlock()
	if sub == nil {
		return
	}
	sub.Close()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		d.logger.Warn("the subscription to jobs' completion did not end in 5s")
	}
}

// errDoneWatcherClosed: the Client was closed.
var errDoneWatcherClosed = errors.New("client closed")
