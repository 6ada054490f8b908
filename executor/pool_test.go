package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakePooled is a sandbox that only knows its ID and whether it was
// released: what a pool does with one.
type fakePooled struct {
	Sandbox
	id       string
	released atomic.Bool
}

func (f *fakePooled) ID() string                    { return f.id }
func (f *fakePooled) Release(context.Context) error { f.released.Store(true); return nil }

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// The pool fills to its size and no further, hands out the oldest first,
// makes one in place of each taken only when woken, and close releases
// what waits.
func TestPoolFillsTakesAndRefills(t *testing.T) {
	var made atomic.Int64
	p := newPool(2, func(context.Context) (*fakePooled, error) {
		return &fakePooled{id: fmt.Sprint(made.Add(1))}, nil
	}, func(err error, _ int) (time.Duration, bool) { t.Errorf("make failed: %v", err); return 0, true })
	p.start()
	waitFor(t, "two ready", func() bool { return p.readyCount() == 2 })
	time.Sleep(50 * time.Millisecond)
	if n := made.Load(); n != 2 {
		t.Fatalf("made %d for a pool of 2", n)
	}
	first, ok := p.take()
	if !ok || first.id != "1" {
		t.Fatalf("took %v %v, want the oldest (1)", first, ok)
	}
	time.Sleep(50 * time.Millisecond)
	if n := made.Load(); n != 2 || p.readyCount() != 1 {
		t.Fatalf("without a refill the pool made %d and holds %d", n, p.readyCount())
	}
	p.refill()
	waitFor(t, "refilled", func() bool { return p.readyCount() == 2 })
	second, _ := p.take()
	third, _ := p.take()
	if second.id != "2" || third.id != "3" {
		t.Fatalf("took %s then %s, want 2 then 3", second.id, third.id)
	}
	if _, ok := p.take(); ok {
		t.Fatal("took from an empty pool")
	}
	p.refill()
	waitFor(t, "refilled", func() bool { return p.readyCount() == 2 })
	p.mu.Lock()
	waiting := append([]*fakePooled(nil), p.ready...)
	p.mu.Unlock()
	if err := p.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, sb := range waiting {
		if !sb.released.Load() {
			t.Errorf("close left sandbox %s", sb.id)
		}
	}
	if first.released.Load() || second.released.Load() {
		t.Error("close released sandboxes already handed out")
	}
	if _, ok := p.take(); ok {
		t.Fatal("took from a closed pool")
	}
}

// failed hears each failure with the count in a row (reset by a success)
// and decides the wait; stop ends the filling for good.
func TestPoolFailures(t *testing.T) {
	var calls atomic.Int64
	var mu sync.Mutex
	var counts []int
	p := newPool(1, func(context.Context) (*fakePooled, error) {
		// Fail, fail, succeed, then fail for good.
		switch calls.Add(1) {
		case 3:
			return &fakePooled{id: "ok"}, nil
		default:
			return nil, errors.New("boom")
		}
	}, func(err error, inARow int) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		counts = append(counts, inARow)
		return time.Millisecond, len(counts) == 3
	})
	p.start()
	waitFor(t, "one ready", func() bool { return p.readyCount() == 1 })
	if _, ok := p.take(); !ok {
		t.Fatal("nothing to take")
	}
	p.refill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the pool kept filling after failed said stop")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(counts) != "[1 2 1]" {
		t.Errorf("failures in a row %v, want [1 2 1]", counts)
	}
	if err := p.close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A paused pool makes nothing until it is unpaused and woken; a sandbox
// whose making outlived close is released, not kept.
func TestPoolPausedAndClosedWhileMaking(t *testing.T) {
	var paused atomic.Bool
	paused.Store(true)
	var made []*fakePooled
	var mu sync.Mutex
	started := make(chan struct{}, 4)
	p := newPool(1, func(ctx context.Context) (*fakePooled, error) {
		sb := &fakePooled{id: "x"}
		mu.Lock()
		made = append(made, sb)
		n := len(made)
		mu.Unlock()
		started <- struct{}{}
		if n == 2 {
			<-ctx.Done() // made while close runs
		}
		return sb, nil
	}, func(error, int) (time.Duration, bool) { return 0, true })
	p.paused = paused.Load
	p.start()
	time.Sleep(50 * time.Millisecond)
	if n := p.readyCount(); n != 0 {
		t.Fatalf("a paused pool made %d", n)
	}
	paused.Store(false)
	p.refill()
	waitFor(t, "one ready", func() bool { return p.readyCount() == 1 })
	p.take()
	p.refill()
	<-started
	<-started
	if err := p.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(made) != 2 || !made[1].released.Load() {
		t.Fatalf("the sandbox made while closing was kept (made %d)", len(made))
	}
}
