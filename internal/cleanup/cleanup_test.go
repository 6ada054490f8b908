package cleanup

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCleanupStack(t *testing.T) {
	errA := errors.New("a failed")
	errC := errors.New("c failed")

	tests := []struct {
		name    string
		steps   []string
		fail    map[string]error
		wantErr []error // each must be found with errors.Is
		wantMsg []string
	}{
		{"no steps", nil, nil, nil, nil},
		{"one step", []string{"a"}, nil, nil, nil},
		{"reverse order", []string{"a", "b", "c", "d"}, nil, nil, nil},
		{"one failure", []string{"a", "b", "c"}, map[string]error{"b": context.DeadlineExceeded}, []error{context.DeadlineExceeded}, []string{"cleanup b: context deadline exceeded"}},
		{"failures are joined, later steps still run", []string{"a", "b", "c"}, map[string]error{"a": errA, "c": errC}, []error{errA, errC}, []string{"cleanup a: a failed", "cleanup c: c failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Stack
			var ran []string
			for _, name := range tt.steps {
				c.Add(name, func(ctx context.Context) error {
					ran = append(ran, name)
					return tt.fail[name]
				})
			}
			err := c.Release(context.Background())

			var want []string
			for i := len(tt.steps) - 1; i >= 0; i-- {
				want = append(want, tt.steps[i])
			}
			if strings.Join(ran, ",") != strings.Join(want, ",") {
				t.Errorf("ran %q, want %q", ran, want)
			}
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Errorf("release = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("release = nil, want %v", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("errors.Is(%v, %v) = false", err, w)
				}
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("release = %q, want it to contain %q", err, m)
				}
			}
			if errors.Is(err, context.Canceled) {
				t.Errorf("errors.Is(%v, context.Canceled) = true", err)
			}
			// The step is named on each joined error, in the order the steps ran.
			if len(tt.wantMsg) == 2 {
				if i, j := strings.Index(err.Error(), tt.wantMsg[0]), strings.Index(err.Error(), tt.wantMsg[1]); i < j {
					t.Errorf("release = %q: want %q (ran first) before %q", err, tt.wantMsg[1], tt.wantMsg[0])
				}
			}
		})
	}
}

func TestCleanupStackReleaseTwice(t *testing.T) {
	var c Stack
	counts := map[string]int{}
	boom := errors.New("boom")
	for _, name := range []string{"a", "b"} {
		c.Add(name, func(ctx context.Context) error {
			counts[name]++
			return boom
		})
	}
	if err := c.Release(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("first release = %v, want boom", err)
	}
	if err := c.Release(context.Background()); err != nil {
		t.Errorf("second release = %v, want nil", err)
	}
	if counts["a"] != 1 || counts["b"] != 1 {
		t.Errorf("steps ran %v times, want once each", counts)
	}
}

func TestCleanupStackConcurrentRelease(t *testing.T) {
	var c Stack
	var mu sync.Mutex
	count := 0
	for range 10 {
		c.Add("step", func(ctx context.Context) error {
			mu.Lock()
			count++
			mu.Unlock()
			return nil
		})
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { c.Release(context.Background()) })
	}
	wg.Wait()
	if count != 10 {
		t.Errorf("%d steps ran, want 10 (each once)", count)
	}
}

type ctxKey struct{}

func TestCleanupStackContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "job-1"))
	cancel()
	expired, cancel2 := context.WithTimeout(context.WithValue(context.Background(), ctxKey{}, "job-1"), -time.Second)
	defer cancel2()

	for name, ctx := range map[string]context.Context{"cancelled": cancelled, "deadline exceeded": expired} {
		t.Run(name, func(t *testing.T) {
			if ctx.Err() == nil {
				t.Fatal("test setup: context is live")
			}
			var c Stack
			ran := 0
			for range 2 {
				c.Add("check", func(ctx context.Context) error {
					ran++
					if err := ctx.Err(); err != nil {
						t.Errorf("step ctx.Err() = %v, want nil", err)
					}
					if _, ok := ctx.Deadline(); ok {
						t.Errorf("step ctx has a deadline")
					}
					if ctx.Done() != nil {
						select {
						case <-ctx.Done():
							t.Errorf("step ctx is done")
						default:
						}
					}
					if v, _ := ctx.Value(ctxKey{}).(string); v != "job-1" {
						t.Errorf("step ctx value = %q, want the caller's values kept", v)
					}
					return nil
				})
			}
			if err := c.Release(ctx); err != nil {
				t.Errorf("release = %v", err)
			}
			if ran != 2 {
				t.Errorf("%d steps ran, want 2", ran)
			}
		})
	}
}

// ReleaseOnError unwinds a failed set-up, joining the steps' errors to the
// set-up's, and leaves a successful one's stack armed.
func TestCleanupStackReleaseOnError(t *testing.T) {
	failed := errors.New("set-up failed")
	boom := errors.New("boom")
	setUp := func(c *Stack, fail bool) (err error) {
		defer c.ReleaseOnError(context.Background(), &err)
		c.Add("a", func(context.Context) error { return nil })
		c.Add("b", func(context.Context) error { return boom })
		if fail {
			return failed
		}
		return nil
	}
	var c Stack
	err := setUp(&c, true)
	if !errors.Is(err, failed) || !errors.Is(err, boom) || !strings.Contains(err.Error(), "cleanup b: boom") {
		t.Errorf("failed set-up = %v, want its error joined with cleanup b's", err)
	}
	if err := c.Release(context.Background()); err != nil {
		t.Errorf("Release after the unwinding = %v, want nil (the steps ran)", err)
	}

	var ok Stack
	if err := setUp(&ok, false); err != nil {
		t.Fatalf("successful set-up = %v", err)
	}
	if err := ok.Release(context.Background()); !errors.Is(err, boom) {
		t.Errorf("Release of a successful set-up's stack = %v, want its steps to run now", err)
	}
}
