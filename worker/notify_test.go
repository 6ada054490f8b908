package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/executortest"
	"github.com/sandq/sandq/jobs"
)

// TestWaitHearsTheWorkersCompletion: a producer whose poll interval is an
// hour gets the job's result from Wait, so it learned of the job's end
// from the worker's completion message (finish, notifyDone), not from a
// poll. The job runs until the producer has read its state once, so the
// producer is subscribed before the job ends.
func TestWaitHearsTheWorkersCompletion(t *testing.T) {
	release := make(chan struct{})
	fake := &executortest.Runner{Job: func(ctx context.Context, sb *executortest.Sandbox) executortest.Run {
		select {
		case <-release:
		case <-ctx.Done():
		}
		code := 0
		return executortest.Run{Outcome: executor.Outcome{ExitCode: &code}, Stdout: "released\n"}
	}}
	r := newFakeRig(t, nil, fake)
	cfg := r.cfg
	cfg.PollInterval = time.Hour
	c, err := jobs.NewClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := r.enqueue("succeed", nil)
	var once sync.Once
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := c.Wait(ctx, id, func(*jobs.JobStatus) { once.Do(func() { close(release) }) })
	if err != nil {
		t.Fatalf("wait with an hour's poll interval: %v (no completion message ended it)", err)
	}
	res := st.Result
	if st.State != jobs.StateDone || res == nil || res.Status != jobs.StatusSucceeded || res.Stdout == nil || res.Stdout.Tail != "released\n" {
		t.Fatalf("wait returned %+v, want the job succeeded with its output", st)
	}
}
