package bench

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// TestAwaitResultHearsCompletion: the bench learns that a job is done
// from the worker's completion message. Its client reads every hour
// otherwise, so only the message (and the reads after it, as the stand-in
// worker returns a moment after publishing, like the real one may) can
// end the wait. The result seen is the one written, seen after the
// handler returned; how long after is logged, not asserted. It needs no
// root: an asynq server stands in for the worker.
func TestAwaitResultHearsCompletion(t *testing.T) {
	addr := testenv.Redis(t)
	cfg := jobs.Config{RedisAddr: addr, PollInterval: time.Hour,
		Storage: storage.Config{Endpoint: "127.0.0.1:9000", AccessKey: "access", SecretKey: "secret", Bucket: "bench"}}.WithDefaults()
	client, err := jobs.NewClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	e := &env{cfg: cfg, client: client, insp: asynq.NewInspector(asynq.RedisClientOpt{Addr: addr})}
	defer e.insp.Close()
	pub := redis.NewClient(&redis.Options{Addr: addr})
	defer pub.Close()

	const queue = "bench-await"
	release := make(chan struct{})
	var returned atomic.Int64
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: addr}, asynq.Config{
		Concurrency: 1, Queues: map[string]int{queue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		<-release
		id, _ := asynq.GetTaskID(ctx)
		b, _ := json.Marshal(&jobs.Result{ID: id, Queue: queue, Status: jobs.StatusSucceeded, Outputs: []jobs.OutputDoc{}})
		if _, err := task.ResultWriter().Write(b); err != nil {
			return err
		}
		if err := pub.Publish(ctx, keys.DoneChannel, id).Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
		returned.Store(time.Now().UnixNano())
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()

	id := jobs.NewJobID()
	ac := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	defer ac.Close()
	if _, err := ac.Enqueue(asynq.NewTask(jobs.TypeRun, []byte("{}")), asynq.TaskID(id), asynq.Queue(queue), asynq.Retention(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// The job ends once the bench follows it (its first read is right
	// after WatchDone subscribed).
	go func() {
		time.Sleep(100 * time.Millisecond)
		close(release)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, seen, err := e.awaitResult(ctx, queue, id, 20*time.Second)
	if err != nil {
		t.Fatalf("awaitResult with an hour's poll interval: %v (the completion message did not end it)", err)
	}
	if res.ID != id || res.Status != jobs.StatusSucceeded {
		t.Fatalf("result %+v, want job %s succeeded", res, id)
	}
	ret := time.Unix(0, returned.Load())
	if returned.Load() == 0 || seen.Before(ret) {
		t.Fatalf("result seen at %s, before the handler returned at %s", seen.Format(time.StampMicro), ret.Format(time.StampMicro))
	}
	t.Logf("result seen %.2f ms after the handler returned", ms(seen.Sub(ret)))
}
