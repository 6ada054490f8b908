package executor

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// pool keeps up to size sandboxes made ahead of demand: the common part of
// the warm pool (WarmRunner) and the restore pools (SnapshotRunner). From
// start until close a goroutine makes sandboxes with make until the pool
// holds size of them, counting those being made, then sleeps until refill
// wakes it: the owner calls refill when a sandbox it handed out is
// released, so that making the next one does not compete with the job that
// took the last one.
type pool[S Sandbox] struct {
	size int
	make func(context.Context) (S, error)
	// failed is told of each failed make and of how many failed in a row
	// (1 for the first); it says how long to wait before the next, or to
	// stop filling for good.
	failed func(err error, inARow int) (wait time.Duration, stop bool)
	// paused, when set, keeps the pool from making more while it is true.
	paused func() bool

	mu     sync.Mutex
	ready  []S
	making int
	closed bool
	wake   chan struct{}
	stop   context.CancelFunc
	done   chan struct{}

	hits, misses atomic.Int64
}

func newPool[S Sandbox](size int, mk func(context.Context) (S, error), failed func(error, int) (time.Duration, bool)) *pool[S] {
	return &pool[S]{size: size, make: mk, failed: failed, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// start begins filling in the background.
func (p *pool[S]) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go p.fill(ctx)
}

func (p *pool[S]) fill(ctx context.Context) {
	defer close(p.done)
	inARow := 0
	for {
		p.mu.Lock()
		need := !p.closed && (p.paused == nil || !p.paused()) && len(p.ready)+p.making < p.size
		if need {
			p.making++
		}
		p.mu.Unlock()
		if !need {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		sb, err := p.make(ctx)
		p.mu.Lock()
		p.making--
		kept := err == nil && !p.closed
		if kept {
			p.ready = append(p.ready, sb)
		}
		p.mu.Unlock()
		if err == nil && !kept {
			// Made after close began.
			sb.Release(context.Background())
		}
		if err == nil {
			inARow = 0
			continue
		}
		inARow++
		wait, stop := p.failed(err, inARow)
		if stop {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// take hands out the sandbox that has waited longest, if one is ready.
func (p *pool[S]) take() (S, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sb S
	if len(p.ready) == 0 || p.closed {
		return sb, false
	}
	sb = p.ready[0]
	p.ready = p.ready[1:]
	return sb, true
}

// refill wakes the pool to make sandboxes in place of those taken.
func (p *pool[S]) refill() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// readyCount is how many sandboxes wait for a job.
func (p *pool[S]) readyCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// close stops filling (waiting for a make under way) and releases the
// sandboxes still waiting.
func (p *pool[S]) close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	if p.stop != nil {
		p.stop()
		<-p.done
	}
	var errs []error
	for _, sb := range ready {
		errs = append(errs, sb.Release(ctx))
	}
	return errors.Join(errs...)
}
