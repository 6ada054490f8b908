package jobs

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
)

// doneClient is a producer on a Redis of the test's own, reading jobs'
// state every poll besides hearing their completion.
func doneClient(t *testing.T, addr string, poll time.Duration) *Client {
	t.Helper()
	cfg := validConfig()
	cfg.RedisAddr, cfg.PollInterval = addr, poll
	c, err := NewClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// enqueueBare queues a job:run task with a fresh job ID and no files (the
// stand-in worker below never reads them), kept an hour once done.
func enqueueBare(t *testing.T, c *Client) string {
	t.Helper()
	id := NewJobID()
	if _, err := c.client.Enqueue(asynq.NewTask(TypeRun, []byte("{}")), asynq.TaskID(id), asynq.Queue(DefaultQueue), asynq.Retention(time.Hour), asynq.MaxRetry(0)); err != nil {
		t.Fatal(err)
	}
	return id
}

// standInWorker runs an asynq server on addr whose handler is handle: what
// package worker does at a job's end, without a sandbox.
func standInWorker(t *testing.T, addr string, handle func(ctx context.Context, task *asynq.Task) error) {
	t.Helper()
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: addr}, asynq.Config{
		Concurrency: 2, Queues: map[string]int{DefaultQueue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := srv.Start(asynq.HandlerFunc(handle)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

// writeResult writes a succeeded result whose reason is marker, as the
// worker's finish does.
func writeResult(task *asynq.Task, marker string) error {
	b, err := json.Marshal(&Result{Queue: DefaultQueue, Status: StatusSucceeded, Reason: marker, Outputs: []OutputDoc{}})
	if err != nil {
		return err
	}
	_, err = task.ResultWriter().Write(b)
	return err
}

// firstRead returns an onState that closes the channel at the first read
// of the job's state: the waiter is subscribed by then.
func firstRead() (func(*JobStatus), chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	return func(*JobStatus) { once.Do(func() { close(ch) }) }, ch
}

// TestWaitHearsCompletion: with a poll interval of an hour, Wait returns
// the job's result only because the worker's completion message woke it.
// The stand-in worker returns a moment after publishing, as the real one
// may, so the first read after the message still shows the job active and
// only the burst of reads that follows sees it done.
func TestWaitHearsCompletion(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	pub := redis.NewClient(&redis.Options{Addr: addr})
	defer pub.Close()
	onState, reading := firstRead()
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		<-reading
		id, _ := asynq.GetTaskID(ctx)
		if err := writeResult(task, "finished by "+id); err != nil {
			return err
		}
		if err := pub.Publish(ctx, keys.DoneChannel, id).Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	id := enqueueBare(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.Wait(ctx, id, onState)
	if err != nil {
		t.Fatalf("wait with an hour's poll interval: %v (the completion message did not end it)", err)
	}
	if st.State != StateDone || st.Result == nil || st.Result.Reason != "finished by "+id {
		t.Fatalf("wait returned %+v, want the job done with the stand-in worker's result", st)
	}
}

// TestWaitFallsBackToPolling: a completion whose message is lost (none is
// published) is still seen, by the reads every poll interval.
func TestWaitFallsBackToPolling(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, 50*time.Millisecond)
	onState, reading := firstRead()
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		<-reading
		return writeResult(task, "no message")
	})
	id := enqueueBare(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.Wait(ctx, id, onState)
	if err != nil || st.State != StateDone || st.Result == nil || st.Result.Reason != "no message" {
		t.Fatalf("wait without a message: %+v %v, want the job done by a fallback read", st, err)
	}
}

// TestWaitReadsAgainAfterResubscribing: a job that ends while the
// subscription's connection is down (its message lost) is seen as soon as
// the subscription is back, not at the next fallback read (an hour away).
func TestWaitReadsAgainAfterResubscribing(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	onState, reading := firstRead()
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		<-reading
		return writeResult(task, "ended unheard")
	})
	id := enqueueBare(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type waited struct {
		st  *JobStatus
		err error
	}
	got := make(chan waited, 1)
	go func() {
		st, err := c.Wait(ctx, id, onState)
		got <- waited{st, err}
	}()
	// The job is done, unannounced, before the connection drops.
	for {
		info, err := c.insp.GetTaskInfo(DefaultQueue, id)
		if err == nil && info.State == asynq.TaskStateCompleted {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the stand-in worker did not complete the job")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The stand-in worker's asynq server has a subscription of its own,
	// killed too; it subscribes again as well.
	if n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n < 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d %v, want the subscriptions killed", n, err)
	}
	w := <-got
	if w.err != nil || w.st.State != StateDone || w.st.Result.Reason != "ended unheard" {
		t.Fatalf("wait across a lost subscription: %+v %v, want the job done", w.st, w.err)
	}
}

// TestDoneWatchWakesOnlyItsJob: a message wakes every waiter of its job
// and no other; one heard a moment before a waiter starts wakes it at once.
func TestDoneWatchWakesOnlyItsJob(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	pub := redis.NewClient(&redis.Options{Addr: addr})
	defer pub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b1, b2, last := c.WatchDone(ctx, "job-a"), c.WatchDone(ctx, "job-b"), c.WatchDone(ctx, "job-b"), c.WatchDone(ctx, "job-last")
	for _, w := range []*DoneWatch{a, b1, b2, last} {
		defer w.Stop()
	}
	for _, id := range []string{"job-b", "job-c", "job-last"} {
		if err := pub.Publish(ctx, keys.DoneChannel, id).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Messages are delivered in order: once job-last's is, the others
	// have been.
	if err := last.Next(ctx); err != nil {
		t.Fatalf("job-last's waiter: %v", err)
	}
	pending := func(w *DoneWatch) bool {
		select {
		case <-w.wake:
			return true
		default:
			return false
		}
	}
	if !pending(b1) || !pending(b2) {
		t.Error("a waiter of job-b was not woken by its message")
	}
	if pending(a) {
		t.Error("job-a's waiter was woken by another job's message")
	}
	// job-c ended a moment ago: its waiter starts woken.
	late := c.WatchDone(ctx, "job-c")
	defer late.Stop()
	if !pending(late) {
		t.Error("a waiter started just after its job's message was not woken")
	}
	// A stopped watch is forgotten.
	a.Stop()
	c.done.mu.Lock()
	_, kept := c.done.waiters["job-a"]
	c.done.mu.Unlock()
	if kept {
		t.Error("job-a's stopped waiter is still registered")
	}
}

// TestCloseEndsDoneSubscription: Close ends the subscription (Redis counts
// no subscriber left) and its goroutine; a watch after Close only polls.
func TestCloseEndsDoneSubscription(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subscribers := func() int64 {
		n, err := admin.PubSubNumSub(ctx, keys.DoneChannel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[keys.DoneChannel]
	}
	if n := subscribers(); n != 0 {
		t.Fatalf("%d subscribers before any wait", n)
	}
	w := c.WatchDone(ctx, "job-x")
	w.Stop()
	c.done.mu.Lock()
	stopped := c.done.stopped
	c.done.mu.Unlock()
	if n := subscribers(); n != 1 || stopped == nil {
		t.Fatalf("%d subscribers after a watch (goroutine started: %v), want 1", n, stopped != nil)
	}
	c.Close()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscription's goroutine still runs after Close")
	}
	for deadline := time.Now().Add(10 * time.Second); subscribers() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Redis still counts a subscriber after Close")
		}
	}
	c.WatchDone(ctx, "job-y").Stop()
	c.done.mu.Lock()
	again := c.done.sub != nil
	c.done.mu.Unlock()
	if again {
		t.Error("a watch after Close subscribed again")
	}
}

// TestWatchDoneOnRedisCluster: the completion message, published through
// one node of a Redis Cluster, reaches a waiter subscribed through another
// (a cluster broadcasts PUBLISH to every node).
func TestWatchDoneOnRedisCluster(t *testing.T) {
	cl := testenv.StartCluster(t, testenv.ClusterOptions{})
	cfg := validConfig()
	cfg.RedisAddr, cfg.RedisCluster, cfg.PollInterval = "", cl.Addrs(), time.Hour
	c, err := NewClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := c.WatchDone(ctx, "job-1")
	defer w.Stop()
	pub := redis.NewClient(&redis.Options{Addr: cl.Addrs()[len(cl.Addrs())-1]})
	defer pub.Close()
	if err := pub.Publish(ctx, keys.DoneChannel, "job-1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.Next(ctx); err != nil {
		t.Fatalf("no completion message through the cluster: %v", err)
	}
}
