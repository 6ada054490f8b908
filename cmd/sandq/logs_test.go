package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// runLogs runs `sandq --redis-addr ADDR logs ARGS...` and returns its
// stdout, stderr and error.
func runLogs(addr string, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"sandq", "--redis-addr", addr, "logs"}, args...))
	return out.String(), errOut.String(), err
}

// TestLogsCommand: `sandq logs` prints a job's live output from Redis (the
// worker side is not this package's: the test writes the stream in its
// format): stdout chunks to stdout, stderr chunks to stderr, escaped, a
// UTF-8 character split across chunks whole, markers for dropped output
// and a new attempt on stderr. With --follow it ends once the job is done;
// an unknown job is an error, a job without output says so.
func TestLogsCommand(t *testing.T) {
	addr := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	add := func(id string, e jobs.LogEvent) {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.LiveLog(id), Values: e.Values()}).Err(); err != nil {
			t.Error(err)
		}
	}
	// A stand-in worker writes the output, its End, and a result.
	enq := standInWorker(t, addr, func(ctx context.Context, id string) {
		if strings.HasPrefix(id, "quiet") {
			// Ends without output.
		} else {
			add(id, jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "hello \xc3"})
			add(id, jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "\xa9t\xc3\xa9\n"})
			add(id, jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: "warn \x1b[31mred\n"})
			add(id, jobs.LogEvent{Attempt: 1, End: true})
			add(id, jobs.LogEvent{Attempt: 2, Stream: "stdout", Data: "again"})
			add(id, jobs.LogEvent{Attempt: 2, Dropped: 3 << 20})
			add(id, jobs.LogEvent{Attempt: 2, Stream: "stdout", Data: "tail\n"})
			add(id, jobs.LogEvent{Attempt: 2, End: true})
		}
	})
	var ids []string
	for _, prefix := range []string{"loud", "quiet"} {
		id := prefix + "-" + jobs.NewJobID()
		if _, err := enq.Enqueue(asynq.NewTask(jobs.TypeRun, []byte(fmt.Sprintf(`{"id":%q}`, id))), asynq.TaskID(id), asynq.Retention(time.Hour)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	loud, quiet := ids[0], ids[1]

	// --follow returns by itself once the job is done and its output read.
	out, errOut, err := runLogs(addr, "--follow", loud)
	if err != nil {
		t.Fatalf("logs --follow: %v\n%s", err, errOut)
	}
	// stdout is not a terminal: the bytes stay as the job wrote them, the
	// marker of the bytes dropped between them going to stderr.
	if want := "hello été\nagaintail\n"; out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	wantErr := "warn \\x1b[31mred\n--- attempt 2 ---\n--- 3MiB of output dropped"
	if !strings.HasPrefix(errOut, wantErr) || strings.Contains(errOut, "\x1b") {
		t.Errorf("stderr %q, want it to start %q, escaped", errOut, wantErr)
	}
	// Without --follow, what the stream holds: the same, the job being done.
	if out2, _, err := runLogs(addr, loud); err != nil || out2 != out {
		t.Errorf("logs without --follow: %q %v, want %q", out2, err, out)
	}

	out, errOut, err = runLogs(addr, "-f", quiet)
	if err != nil || out != "" || !strings.Contains(errOut, "job "+quiet+" has no live output") {
		t.Errorf("a job without output: %q %q %v, want nothing on stdout and a note", out, errOut, err)
	}
	if _, _, err := runLogs(addr, "no-such-job"); err == nil || !strings.Contains(err.Error(), "job not found: no-such-job") {
		t.Errorf("an unknown job: %v, want job not found", err)
	}
	if _, _, err := runLogs(addr); err == nil || !strings.Contains(err.Error(), "logs takes exactly one job ID") {
		t.Errorf("no job ID: %v", err)
	}
}

// standInWorker serves the default queue of the Redis at addr in the
// worker's place (the worker side is not this package's): run writes the
// job's live output, and the job then succeeds with no outputs. It
// returns a client to queue jobs with.
func standInWorker(t *testing.T, addr string, run func(ctx context.Context, id string)) *asynq.Client {
	t.Helper()
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: addr}, asynq.Config{
		Concurrency: 1, Queues: map[string]int{jobs.DefaultQueue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		run(ctx, id)
		b, _ := json.Marshal(&jobs.Result{ID: id, Queue: jobs.DefaultQueue, Status: jobs.StatusSucceeded, Outputs: []jobs.OutputDoc{}})
		_, err := task.ResultWriter().Write(b)
		return err
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	enq := asynq.NewClient(asynq.RedisClientOpt{Addr: addr})
	t.Cleanup(func() { enq.Close() })
	return enq
}

// failFirst fails its first write and keeps the rest.
type failFirst struct {
	failed bool
	kept   strings.Builder
}

func (w *failFirst) Write(p []byte) (int, error) {
	if !w.failed {
		w.failed = true
		return 0, errors.New("broken pipe")
	}
	return w.kept.Write(p)
}

// TestWaitGoesOnWhenLiveOutputStops: `sandq wait` whose live output
// cannot be printed (stdout refused the job's first line) says so on
// stderr and goes on waiting without it: the result comes, and the exit
// is the job's.
func TestWaitGoesOnWhenLiveOutputStops(t *testing.T) {
	addr := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	enq := standInWorker(t, addr, func(ctx context.Context, id string) {
		for _, e := range []jobs.LogEvent{{Attempt: 1, Stream: "stdout", Data: "first\n"}, {Attempt: 1, Stream: "stdout", Data: "second\n"}} {
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.LiveLog(id), Values: e.Values()}).Err(); err != nil {
				t.Error(err)
			}
			time.Sleep(300 * time.Millisecond) // heard live, one at a time
		}
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.LiveLog(id), Values: jobs.LogEvent{Attempt: 1, End: true}.Values()})
	})
	id := jobs.NewJobID()
	if _, err := enq.Enqueue(asynq.NewTask(jobs.TypeRun, []byte(fmt.Sprintf(`{"id":%q}`, id))), asynq.TaskID(id), asynq.Retention(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var out failFirst
	var errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run([]string{"sandq", "--redis-addr", addr, "wait", id})
	if err != nil || !strings.Contains(errOut.String(), "--- live output stopped: ") || !strings.Contains(errOut.String(), "broken pipe") {
		t.Fatalf("wait: %v\nstderr %q; want a note that the live output stopped", err, errOut.String())
	}
	if got := out.kept.String(); strings.Contains(got, "second") || !strings.Contains(got, "succeeded") {
		t.Errorf("stdout after the failed write %q: want the result, and no more live output", got)
	}
}

// TestLivePrinterKeepsTheStateLineApart: on a terminal, the state line is
// cleared before output is written and drawn again only once the output
// has ended its line, so that neither garbles the other.
func TestLivePrinterKeepsTheStateLineApart(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newLivePrinter(&out, &errOut, true)
	p.state("job running 1s")
	p.event(jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: "half a line"})
	p.state("job running 2s") // not drawn: the line is open
	p.event(jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: ", done\n"})
	p.event(jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "to a file"})
	p.finish(true)
	want := "\r\033[Kjob running 1s" + "\r\033[Khalf a line" + ", done\n\r\033[Kjob running 2s" + "\r\033[K\r\033[Kjob running 2s\n"
	if errOut.String() != want {
		t.Errorf("stderr %q\nwant   %q", errOut.String(), want)
	}
	// stdout is not the terminal here: its open line does not hold the
	// state line back, and it is ended before the result.
	if out.String() != "to a file\n" {
		t.Errorf("stdout %q", out.String())
	}
}

// A result's log tails are not printed again when the live output showed
// every byte of them for the result's attempt; a gap, another attempt or a
// stream shown in part brings the tail back.
func TestResultLeavesOutLogsShownLive(t *testing.T) {
	res := func(attempt int, out, errOut string) *jobs.Result {
		return &jobs.Result{ID: "job-1", Status: jobs.StatusSucceeded, Attempt: attempt,
			Stdout: &jobs.LogDoc{Tail: out, Bytes: int64(len(out)), URL: "http://store/stdout"},
			Stderr: &jobs.LogDoc{Tail: errOut, Bytes: int64(len(errOut)), URL: "http://store/stderr"}}
	}
	heard := func(events ...jobs.LogEvent) *livePrinter {
		var out, errOut strings.Builder
		p := newLivePrinter(&out, &errOut, false)
		for _, e := range events {
			if err := p.event(e); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	print := func(p *livePrinter, r *jobs.Result) string {
		var b strings.Builder
		printHumanShown(&b, &jobs.JobStatus{ID: r.ID, Queue: "default", State: jobs.StateDone, Result: r}, p.shownWhole(r))
		return b.String()
	}
	whole := heard(jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "one\n"}, jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: "warn\n"},
		jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "two\n"}, jobs.LogEvent{Attempt: 1, End: true})
	got := print(whole, res(1, "one\ntwo\n", "warn\n"))
	if strings.Contains(got, "one\n") || strings.Contains(got, "warn\n") ||
		!strings.Contains(got, "--- stdout (8 bytes, shown above) http://store/stdout\n") || !strings.Contains(got, "--- stderr (5 bytes, shown above)") {
		t.Errorf("logs shown whole were printed again:\n%s", got)
	}
	for name, c := range map[string]struct {
		p *livePrinter
		r *jobs.Result
	}{
		"a gap": {heard(jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "one\n"}, jobs.LogEvent{Attempt: 1, Dropped: 4},
			jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "two\n"}), res(1, "one\nXXXXtwo\n", "")},
		"another attempt": {heard(jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "one\n"}), res(2, "one\n", "")},
		"part of it":      {heard(jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "one\n"}), res(1, "zero\none\n", "")},
	} {
		if got := print(c.p, c.r); !strings.Contains(got, c.r.Stdout.Tail) || strings.Contains(got, "shown above") {
			t.Errorf("%s: the tail is left out:\n%s", name, got)
		}
	}
}
