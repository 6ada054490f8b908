package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/bytesize"
	"github.com/sandq/sandq/jobs"
)

// TestWorkerRefusesMaxMemoryOverBudget: a worker whose largest job memory
// limit does not fit its budget would leave such a job waiting forever; it
// refuses to start instead. So does a budget over the host's memory.
func TestWorkerRefusesMaxMemoryOverBudget(t *testing.T) {
	host, err := jobs.HostMemory()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		modify func(*jobs.Config)
		want   []string
	}{
		{"absolute budget under the max", func(c *jobs.Config) {
			c.MaxLimits.Memory, c.DefaultLimits.Memory, c.Worker.MemoryBudget = 2<<30, 1<<30, jobs.MemoryBudget{Bytes: 1 << 30}
		}, []string{"maximum memory limit of a job, 2GiB, is over the worker's memory budget of 1GiB", "--max-memory", "--memory-budget"}},
		{"fraction under the max", func(c *jobs.Config) {
			c.MaxLimits.Memory, c.Worker.MemoryBudget = host/2+1<<30, jobs.MemoryBudget{Fraction: 0.5}
		}, []string{"is over the worker's memory budget", "(0.5 of the host's"}},
		{"budget over the host", func(c *jobs.Config) {
			c.Worker.MemoryBudget = jobs.MemoryBudget{Bytes: host + 1<<30}
		}, []string{"over the host's memory", bytesize.Rough(host)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := workerConfig(t, "127.0.0.1:1")
			c.modify(&cfg)
			w, err := newTestWorker(t, cfg)
			if err == nil {
				w.rdb.Close()
				t.Fatal("New accepted it")
			}
			t.Logf("refused: %v", err)
			for _, s := range c.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
	// The max equal to the budget is fine.
	cfg := workerConfig(t, "127.0.0.1:1")
	cfg.MaxLimits.Memory, cfg.DefaultLimits.Memory, cfg.Worker.MemoryBudget = 1<<30, 1<<30, jobs.MemoryBudget{Bytes: 1 << 30}
	w, err := newTestWorker(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.rdb.Close()
	if w.handler.budget.total != 1<<30 {
		t.Errorf("budget %d", w.handler.budget.total)
	}
}

// TestMemoryBudgetReserve: reservations over the free budget wait, in
// arrival order, and stop waiting when their context ends.
func TestMemoryBudgetReserve(t *testing.T) {
	b := newMemoryBudget(10)
	ctx := context.Background()
	r1, err := b.reserve(ctx, 6)
	if err != nil || b.reserved.Load() != 6 {
		t.Fatal(err, b.reserved.Load())
	}
	if _, err := b.reserve(ctx, 11); err == nil || !strings.Contains(err.Error(), "over this worker's memory budget") {
		t.Errorf("reserve over the whole budget: %v", err)
	}
	// A waiter gives up when its context is cancelled, with the cause.
	cctx, cancel := context.WithCancelCause(ctx)
	errc := make(chan error, 1)
	go func() { _, err := b.reserve(cctx, 5); errc <- err }()
	waitFor(t, func() bool { return b.waiting.Load() == 1 })
	cancel(errCanceled)
	if err := <-errc; err == nil || context.Cause(cctx) != errCanceled {
		t.Errorf("cancelled reserve: %v", err)
	}
	if b.waiting.Load() != 0 || b.reserved.Load() != 6 {
		t.Errorf("after a cancelled wait: waiting %d reserved %d", b.waiting.Load(), b.reserved.Load())
	}
	// Waiters are served in arrival order: a small reservation that would
	// fit now waits behind a large one that does not, so large jobs are not
	// starved.
	var wg sync.WaitGroup
	for i, n := range []int64{8, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := b.reserve(ctx, n)
			if err != nil {
				t.Error(err)
				return
			}
			defer rel()
		}()
		waitFor(t, func() bool { return b.waiting.Load() == int64(i+1) })
	}
	time.Sleep(50 * time.Millisecond)
	if b.reserved.Load() != 6 || b.waiting.Load() != 2 {
		t.Errorf("with 4 free, a 2 queued behind an 8: reserved %d waiting %d; want 6 and 2", b.reserved.Load(), b.waiting.Load())
	}
	r1()
	r1() // a second release is a no-op
	wg.Wait()
	if b.reserved.Load() != 0 || b.waiting.Load() != 0 {
		t.Errorf("after all: reserved %d waiting %d", b.reserved.Load(), b.waiting.Load())
	}
	// A context already done is refused even with room.
	done, stop := context.WithCancelCause(ctx)
	stop(errShutdown)
	if _, err := b.reserve(done, 1); !errors.Is(err, errShutdown) {
		t.Errorf("reserve with a done context: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
