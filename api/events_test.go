package api

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
)

// sseEvent is one Server-Sent Event: its name and data.
type sseEvent struct{ name, data string }

// readEvent reads the next event of a stream, skipping comments.
func readEvent(r *bufio.Reader) (sseEvent, error) {
	ev, err := readFull(r)
	return sseEvent{ev.name, ev.data}, err
}

// TestEventStreamHearsCompletion: with a poll interval of an hour, a job's
// event stream sends "done" with its result only because the worker's
// completion message woke it. A stand-in worker (an asynq server on the
// test's Redis database) ends the job once the stream has sent its first
// event, and returns a moment after announcing it, as the real one may.
func TestEventStreamHearsCompletion(t *testing.T) {
	cfg := jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr)
	// A database of its own: the stand-in worker takes only this test's job.
	cfg.RedisDB, cfg.PollInterval = 9, time.Hour
	f := serve(t, cfg, false)
	a := f.submit(t, tokens["acme"], script("s.sh", "true"))
	if a.code != http.StatusCreated && a.code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	id := a.job(t).ID
	const marker = "ended by the stand-in worker"
	release := make(chan struct{})
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: cfg.RedisAddr, DB: cfg.RedisDB}, asynq.Config{
		Concurrency: 1, Queues: map[string]int{jobs.DefaultQueue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		b, _ := json.Marshal(&jobs.Result{ID: id, Queue: jobs.DefaultQueue, Status: jobs.StatusSucceeded, Reason: marker, Outputs: []jobs.OutputDoc{}})
		if _, err := task.ResultWriter().Write(b); err != nil {
			return err
		}
		if err := f.rdb.Publish(ctx, keys.DoneChannel, id).Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/jobs/"+id+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+tokens["acme"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	r := bufio.NewReader(resp.Body)
	first, err := readEvent(r)
	if err != nil || first.name != "state" {
		t.Fatalf("first event %+v %v, want a state event", first, err)
	}
	select {
	case release <- struct{}{}:
	case <-ctx.Done():
		t.Fatal("the stand-in worker never took the job")
	}
	for {
		ev, err := readEvent(r)
		if err != nil {
			t.Fatalf("stream ended without a done event: %v (the completion message did not wake it)", err)
		}
		if ev.name != "done" {
			continue
		}
		if !strings.Contains(ev.data, marker) || !strings.Contains(ev.data, `"state":"done"`) {
			t.Fatalf("done event %s, want the job done with the stand-in worker's result", ev.data)
		}
		return
	}
}
