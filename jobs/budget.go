package jobs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// MemoryBudget is how much of the host's memory a worker's sandboxes may
// hold at once, counted as the sum of their jobs' memory limits: a
// Fraction of the host's memory (MemTotal), or a number of Bytes. One of
// the two is set; the zero value is DefaultMemoryBudget.
type MemoryBudget struct {
	Fraction float64
	Bytes    int64
}

// DefaultMemoryBudget leaves a quarter of the host's memory to the worker
// itself, runsc's own processes and everything else on the host.
var DefaultMemoryBudget = MemoryBudget{Fraction: 0.75}

// ParseMemoryBudget reads a budget: a fraction of the host's memory
// ("0.75"), a percentage ("75%"), or a size ("8GiB", see ParseSize).
func ParseMemoryBudget(s string) (MemoryBudget, error) {
	t := strings.TrimSpace(s)
	bad := func() (MemoryBudget, error) {
		return MemoryBudget{}, fmt.Errorf("memory budget %q: want a fraction of the host's memory (0.75), a percentage (75%%) or a size (8GiB)", s)
	}
	if p, ok := strings.CutSuffix(t, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return bad()
		}
		if f <= 0 {
			return bad()
		}
		return MemoryBudget{Fraction: f / 100}, nil
	}
	if f, err := strconv.ParseFloat(t, 64); err == nil && f > 0 && f <= 1 {
		return MemoryBudget{Fraction: f}, nil
	}
	n, err := ParseSize(t)
	if err != nil || n == 0 {
		return bad()
	}
	return MemoryBudget{Bytes: n}, nil
}

func (b MemoryBudget) String() string {
	if b.Bytes > 0 {
		return FormatSize(b.Bytes)
	}
	return strconv.FormatFloat(b.Fraction, 'f', -1, 64)
}

func (b MemoryBudget) validate() error {
	switch {
	case b.Fraction != 0 && b.Bytes != 0:
		return errors.New("worker memory budget: set a fraction of the host's memory or a size, not both")
	case b.Bytes == 0 && (math.IsNaN(b.Fraction) || b.Fraction <= 0 || b.Fraction > 1):
		return fmt.Errorf("worker memory budget %v: a fraction of the host's memory must be over 0 and at most 1", b.Fraction)
	case b.Fraction == 0 && b.Bytes < MinMemory:
		return fmt.Errorf("worker memory budget %s: under the minimum memory limit of a job, %s", FormatSize(b.Bytes), FormatSize(MinMemory))
	}
	return nil
}

// resolve is the budget in bytes on a host with total bytes of memory. It
// refuses a budget over the host's memory, and one that the largest memory
// limit a job may ask for does not fit in: such a job would wait forever.
func (b MemoryBudget) resolve(total, maxJob int64) (int64, error) {
	n := b.Bytes
	if n == 0 {
		n = int64(b.Fraction * float64(total))
	}
	if n > total {
		return 0, fmt.Errorf("worker memory budget %s is over the host's memory, %s: lower --memory-budget", roughSize(n), roughSize(total))
	}
	if maxJob > n {
		return 0, fmt.Errorf("the maximum memory limit of a job, %s, is over the worker's memory budget of %s (%s of the host's %s): a job asking for it could never start; lower --max-memory or raise --memory-budget",
			roughSize(maxJob), roughSize(n), b, roughSize(total))
	}
	return n, nil
}

// roughSize prints a size exactly in GiB or MiB when it can, else to a
// tenth of one.
func roughSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0, n < 1<<30 && n%(1<<20) == 0:
		return FormatSize(n)
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	default:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	}
}

// HostMemory is the host's memory (MemTotal in /proc/meminfo), in bytes.
func HostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("host memory: MemTotal %q: %w", v, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	return 0, errors.New("host memory: no MemTotal in /proc/meminfo")
}

// memoryBudget hands out a worker's memory budget to the jobs it runs: a job
// reserves its memory limit before its sandbox is made and gives it back
// once the sandbox is gone. Reservations are served first come, first
// served, so a large job is not starved by small ones behind it.
type memoryBudget struct {
	total    int64
	sem      *semaphore.Weighted
	reserved atomic.Int64
	waiting  atomic.Int64
}

func newMemoryBudget(total int64) *memoryBudget {
	return &memoryBudget{total: total, sem: semaphore.NewWeighted(total)}
}

// reserve waits until n bytes of the budget are free and takes them, or
// until ctx ends. On success the caller must call the returned release.
func (b *memoryBudget) reserve(ctx context.Context, n int64) (release func(), err error) {
	if n > b.total {
		// The worker refuses to start with a maximum over its budget; this
		// only guards against waiting forever.
		return nil, fmt.Errorf("the job's memory limit %s is over this worker's memory budget of %s", FormatSize(n), FormatSize(b.total))
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if !b.sem.TryAcquire(n) {
		b.waiting.Add(1)
		err = b.sem.Acquire(ctx, n)
		b.waiting.Add(-1)
		if err != nil {
			return nil, fmt.Errorf("waiting for %s of the worker's memory budget: %w", FormatSize(n), err)
		}
	}
	b.reserved.Add(n)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			b.reserved.Add(-n)
			b.sem.Release(n)
		}
	}, nil
}

// errMemoryBusy: a job waited for room in the memory budget as long as its
// attempt allows. It goes back to the queue, the attempt not counted (see
// the worker's IsFailure), and runs when there is room, here or elsewhere;
// on its last attempt it ends error instead.
var errMemoryBusy = errors.New("no room in the worker's memory budget")

// reserveMemory reserves the job's memory limit in the worker's budget,
// waiting for room until ctx ends or until the attempt has only the job's
// timeout and half the finish allowance left (asynq would fail the attempt
// at its deadline); then it gives up with errMemoryBusy.
func (h *Handler) reserveMemory(ctx context.Context, job *Job) (func(), error) {
	wctx := ctx
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, d.Add(-(job.Limits.Timeout + h.cfg.FinishAllowance/2)))
		defer cancel()
	}
	start := time.Now()
	release, err := h.budget.reserve(wctx, job.Limits.Memory)
	if err != nil && ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w: waited %s for %s of %s, with %s reserved by running jobs",
			errMemoryBusy, time.Since(start).Round(time.Millisecond), FormatSize(job.Limits.Memory), FormatSize(h.budget.total), FormatSize(h.budget.reserved.Load()))
	}
	return release, err
}
