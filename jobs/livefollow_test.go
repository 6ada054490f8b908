package jobs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
)

// The worker side of live output is not this file's: these tests write
// the stream themselves, in its format (LogEvent.Values), into a real
// Redis, as the worker does.

// addLog appends an event to a job's live output and returns its ID. It
// may run in a stand-in worker's goroutine, so a failure is t.Error.
func addLog(t *testing.T, rdb redis.UniversalClient, id string, e LogEvent) string {
	t.Helper()
	eid, err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: keys.LiveLog(id), Values: e.Values()}).Result()
	if err != nil {
		t.Error(err)
	}
	return eid
}

// enqueueOwned queues a job:run task owned by tenant, with no files.
func enqueueOwned(t *testing.T, c *Client, tenant string) string {
	t.Helper()
	id := NewJobID()
	payload := fmt.Sprintf(`{"id":%q,"tenant":%q}`, id, tenant)
	if _, err := c.client.Enqueue(asynq.NewTask(TypeRun, []byte(payload)), asynq.TaskID(id), asynq.Queue(DefaultQueue), asynq.Retention(time.Hour), asynq.MaxRetry(0)); err != nil {
		t.Fatal(err)
	}
	return id
}

// collect returns a function gathering events, and what it gathered.
func collect() (func(LogEvent) error, *[]LogEvent) {
	var got []LogEvent
	return func(e LogEvent) error { got = append(got, e); return nil }, &got
}

// text joins the events' data as "stream:data" lines, markers as
// "dropped:N", ends as "end:A".
func text(evs []LogEvent) string {
	var b strings.Builder
	for _, e := range evs {
		switch {
		case e.Dropped > 0:
			fmt.Fprintf(&b, "dropped:%d|", e.Dropped)
		case e.End:
			fmt.Fprintf(&b, "end:%d|", e.Attempt)
		default:
			fmt.Fprintf(&b, "%d:%s:%s|", e.Attempt, e.Stream, e.Data)
		}
	}
	return b.String()
}

// TestLogsFollowsBacklogThenLive: a follower that starts after the job
// has written gets what the stream holds, then what the job writes while
// it follows, in order, and stops by itself once the job is done and the
// final attempt's End is read. The stand-in worker writes the second half
// only once the follower has the first, so the second half is live.
func TestLogsFollowsBacklogThenLive(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	w := redis.NewClient(&redis.Options{Addr: addr})
	defer w.Close()
	started, live := make(chan string), make(chan struct{})
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		addLog(t, w, id, LogEvent{Attempt: 1, Stream: "stdout", Data: "one\n"})
		addLog(t, w, id, LogEvent{Attempt: 1, Stream: "stderr", Data: "two"})
		started <- id
		<-live
		addLog(t, w, id, LogEvent{Attempt: 1, Dropped: 4096})
		addLog(t, w, id, LogEvent{Attempt: 1, Stream: "stdout", Data: "three\n"})
		addLog(t, w, id, LogEvent{Attempt: 1, End: true})
		if err := writeResult(task, "done"); err != nil {
			return err
		}
		return w.Publish(ctx, keys.DoneChannel, id).Err()
	})
	id := enqueueBare(t, c)
	if got := <-started; got != id {
		t.Fatalf("the stand-in worker ran %s, want %s", got, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []LogEvent
	err := c.Logs(ctx, id, "", true, func(e LogEvent) error {
		got = append(got, e)
		if len(got) == 2 {
			close(live)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("follow: %v (it must end once the job is done)", err)
	}
	if want := "1:stdout:one\n|1:stderr:two|dropped:4096|1:stdout:three\n|end:1|"; text(got) != want {
		t.Fatalf("followed %q, want %q", text(got), want)
	}
	for i := 1; i < len(got); i++ {
		if !streamIDLess(got[i-1].ID, got[i].ID) {
			t.Fatalf("event IDs out of order: %s then %s", got[i-1].ID, got[i].ID)
		}
	}
}

// TestLogsResumesAfterID: a reader that gives the last ID it saw gets only
// what came after it; a position that is not an entry ID is refused.
func TestLogsResumesAfterID(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	id := enqueueBare(t, c)
	var ids []string
	for _, s := range []string{"a", "b", "c"} {
		ids = append(ids, addLog(t, c.rdb, id, LogEvent{Attempt: 1, Stream: "stdout", Data: s}))
	}
	fn, got := collect()
	if err := c.Logs(context.Background(), id, ids[1], false, fn); err != nil {
		t.Fatal(err)
	}
	if text(*got) != "1:stdout:c|" || (*got)[0].ID != ids[2] {
		t.Fatalf("after %s: %q %+v, want only the third entry", ids[1], text(*got), *got)
	}
	fn, got = collect()
	if err := c.Logs(context.Background(), id, "", false, fn); err != nil || text(*got) != "1:stdout:a|1:stdout:b|1:stdout:c|" {
		t.Fatalf("from the start: %q %v, want all three", text(*got), err)
	}
	for _, bad := range []string{"abc", "1-2-3", "-1", "1 ", "$"} {
		err := c.Logs(context.Background(), id, bad, false, func(LogEvent) error { t.Fatal("an event for a bad position"); return nil })
		if !errors.Is(err, ErrBadLogCursor) || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("after %q: %v, want ErrBadLogCursor naming it", bad, err)
		}
	}
}

// TestLogsStopsWhenTheJobIsDone: following never hangs on a finished job,
// whatever its stream holds: none at all (a job that never ran), entries
// without an End (its worker died mid-run), or an End already read (a
// follower resuming after it).
func TestLogsStopsWhenTheJobIsDone(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, 50*time.Millisecond)
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		return writeResult(task, "done")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := func(id string) {
		t.Helper()
		if _, err := c.Wait(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}

	noStream := enqueueBare(t, c)
	done(noStream)
	fn, got := collect()
	if err := c.Logs(ctx, noStream, "", true, fn); err != nil || len(*got) != 0 {
		t.Fatalf("a finished job without a stream: %v %v, want no events and the follow ended", *got, err)
	}

	noEnd := enqueueBare(t, c)
	done(noEnd)
	addLog(t, c.rdb, noEnd, LogEvent{Attempt: 1, Stream: "stdout", Data: "cut short"})
	fn, got = collect()
	if err := c.Logs(ctx, noEnd, "", true, fn); err != nil || text(*got) != "1:stdout:cut short|" {
		t.Fatalf("a finished job whose stream has no End: %q %v, want its entry and the follow ended", text(*got), err)
	}

	resumed := enqueueBare(t, c)
	done(resumed)
	addLog(t, c.rdb, resumed, LogEvent{Attempt: 1, Stream: "stdout", Data: "x"})
	end := addLog(t, c.rdb, resumed, LogEvent{Attempt: 1, End: true})
	fn, got = collect()
	if err := c.Logs(ctx, resumed, end, true, fn); err != nil || len(*got) != 0 {
		t.Fatalf("resuming after a finished job's End: %v %v, want no events and the follow ended", *got, err)
	}
	if ctx.Err() != nil {
		t.Fatal("the follows outlasted the test's timeout")
	}
}

// TestLogsOfAnotherTenantsJob: through a tenant's view, another tenant's
// job (and a direct producer's) is not found, exactly like a job that does
// not exist; the owner reads it.
func TestLogsOfAnotherTenantsJob(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	acme := enqueueOwned(t, c, "acme")
	direct := enqueueBare(t, c)
	for _, id := range []string{acme, direct} {
		addLog(t, c.rdb, id, LogEvent{Attempt: 1, Stream: "stdout", Data: "secret"})
	}
	never := func(LogEvent) error { t.Fatal("another tenant's output was read"); return nil }
	for _, id := range []string{acme, direct} {
		if err := c.Tenant("globex").Logs(context.Background(), id, "", false, never); !errors.Is(err, ErrJobNotFound) {
			t.Errorf("globex reads %s: %v, want ErrJobNotFound", id, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := c.Tenant("globex").Follow(ctx, id, "", nil, never); !errors.Is(err, ErrJobNotFound) {
			t.Errorf("globex follows %s: %v, want ErrJobNotFound", id, err)
		}
		cancel()
	}
	fn, got := collect()
	if err := c.Tenant("acme").Logs(context.Background(), acme, "", false, fn); err != nil || text(*got) != "1:stdout:secret|" {
		t.Fatalf("acme reads its own job: %q %v", text(*got), err)
	}
}

// TestLogsOfUnknownJob: an ID no queue holds, or one that is not a job
// ID, is a clear error, not an empty output.
func TestLogsOfUnknownJob(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	enqueueBare(t, c) // the queue exists
	never := func(LogEvent) error { t.Fatal("an event of no job"); return nil }
	for _, follow := range []bool{false, true} {
		err := c.Logs(context.Background(), "no-such-job", "", follow, never)
		if !errors.Is(err, ErrJobNotFound) || !strings.Contains(err.Error(), "no-such-job") {
			t.Errorf("follow=%v: %v, want ErrJobNotFound naming the ID", follow, err)
		}
	}
	if err := c.Logs(context.Background(), "../x", "", false, never); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Errorf("a malformed ID: %v, want it refused as not valid", err)
	}
}

// TestFollowGivesDoneAfterTheOutput: Follow hands the done state over only
// after every event of the output, and an error of the output's function
// ends it as a live output error, the job's state still given.
func TestFollowGivesDoneAfterTheOutput(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, 50*time.Millisecond)
	w := redis.NewClient(&redis.Options{Addr: addr})
	defer w.Close()
	release := make(chan struct{})
	standInWorker(t, addr, func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		<-release
		for i := range 3 {
			addLog(t, w, id, LogEvent{Attempt: 1, Stream: "stdout", Data: fmt.Sprint(i)})
		}
		addLog(t, w, id, LogEvent{Attempt: 1, End: true})
		if err := writeResult(task, "done"); err != nil {
			return err
		}
		return w.Publish(ctx, keys.DoneChannel, id).Err()
	})
	id := enqueueBare(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var order []string
	var once bool
	st, err := c.Follow(ctx, id, "", func(st *JobStatus) {
		order = append(order, "state:"+string(st.State))
		if !once {
			once = true
			close(release)
		}
	}, func(e LogEvent) error {
		order = append(order, "log:"+e.Data)
		return nil
	})
	if err != nil || st.State != StateDone {
		t.Fatalf("follow: %+v %v", st, err)
	}
	// States read while the output flows may come between its events;
	// the done state comes once, last.
	var logs []string
	for i, o := range order {
		if o == "state:done" && i != len(order)-1 {
			t.Fatalf("callbacks %v: the done state before the end", order)
		}
		if strings.HasPrefix(o, "log:") {
			logs = append(logs, o)
		}
	}
	if strings.Join(logs, " ") != "log:0 log:1 log:2 log:" || order[len(order)-1] != "state:done" {
		t.Fatalf("callbacks %v, want the output in order, then the done state last", order)
	}
}

// TestFollowEndsOnAnOutputError: an error of the output's function ends
// Follow of a job still pending (no worker here), as a live output error
// wrapping it, with the job's state.
func TestFollowEndsOnAnOutputError(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, 50*time.Millisecond)
	id := enqueueBare(t, c)
	addLog(t, c.rdb, id, LogEvent{Attempt: 1, Stream: "stdout", Data: "x"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	refused := errors.New("cannot print")
	st, err := c.Follow(ctx, id, "", nil, func(LogEvent) error { return refused })
	if !errors.Is(err, ErrLiveOutput) || !errors.Is(err, refused) || st == nil || st.State != StatePending {
		t.Fatalf("follow with a failing function: %+v %v, want ErrLiveOutput wrapping its error and the pending state", st, err)
	}
}

// TestFollowCallsNothingAfterItReturns: Follow cancelled while the output
// function works through a backlog (more than one read's worth) returns
// only once that function can no longer be called, and the rest of the
// read is not handed on. (The API's function writes to the HTTP response,
// which the server reuses once the handler returns.)
func TestFollowCallsNothingAfterItReturns(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, 50*time.Millisecond)
	id := enqueueBare(t, c)
	for i := range liveReadCount + 10 {
		addLog(t, c.rdb, id, LogEvent{Attempt: 1, Stream: "stdout", Data: fmt.Sprintf("%d\n", i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var returned, late, calls atomic.Int32
	_, err := c.Follow(ctx, id, "", nil, func(LogEvent) error {
		if returned.Load() != 0 {
			late.Add(1)
		}
		if calls.Add(1) == 1 {
			cancel() // stopped while the rest of the read's batch waits
		}
		time.Sleep(2 * time.Millisecond)
		return nil
	})
	returned.Store(1)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Follow cancelled: %v, want context.Canceled", err)
	}
	time.Sleep(time.Second) // what was left of the batch took about 0.5 s
	if n := late.Load(); n > 0 || calls.Load() != 1 {
		t.Errorf("the output function was called %d times, %d of them after Follow returned; want once, and never after", calls.Load(), n)
	}
}

// TestLogsFollowsARetry: after an attempt's End, while the job waits for
// its retry, the follower goes on and gets the next attempt's output (the
// poll interval is an hour: it does not wait for one).
func TestLogsFollowsARetry(t *testing.T) {
	addr := testenv.Redis(t)
	c := doneClient(t, addr, time.Hour)
	id := enqueueBare(t, c)
	addLog(t, c.rdb, id, LogEvent{Attempt: 1, Stream: "stdout", Data: "first try"})
	addLog(t, c.rdb, id, LogEvent{Attempt: 1, End: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []LogEvent
	seen := errors.New("saw the retry's output")
	err := c.Logs(ctx, id, "", true, func(e LogEvent) error {
		got = append(got, e)
		if e.End {
			addLog(t, c.rdb, id, LogEvent{Attempt: 2, Stream: "stderr", Data: "second try"})
		}
		if e.Attempt == 2 {
			return seen
		}
		return nil
	})
	if !errors.Is(err, seen) || text(got) != "1:stdout:first try|end:1|2:stderr:second try|" {
		t.Fatalf("follow across a retry: %q %v, want both attempts' output", text(got), err)
	}
}
