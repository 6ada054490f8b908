package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
)

// The worker side of live output is not this package's: these tests write
// a job's stream themselves (jobs.LogEvent.Values, XADD) into the real
// Redis, as the worker does, and a stand-in worker (an asynq server on the
// test's Redis database) ends the job.

// liveServer serves on a Redis database of the test's own, so that the
// stand-in worker takes only the test's jobs; rdb writes to that database.
func liveServer(t *testing.T, db int) (f *fixture, rdb *redis.Client) {
	t.Helper()
	cfg := jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr)
	cfg.RedisDB, cfg.PollInterval = db, 50*time.Millisecond
	f = serve(t, cfg, false)
	rdb = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, DB: db})
	t.Cleanup(func() { rdb.Close() })
	return f, rdb
}

// standIn runs a stand-in worker on the fixture's database: it calls
// write (the job's output) and then ends the job, succeeded, its End
// written first, as the worker does.
func standIn(t *testing.T, f *fixture, rdb *redis.Client, write func(ctx context.Context, id string)) {
	t.Helper()
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: f.cfg.RedisAddr, DB: f.cfg.RedisDB}, asynq.Config{
		Concurrency: 2, Queues: map[string]int{jobs.DefaultQueue: 1}, TaskCheckInterval: 10 * time.Millisecond, LogLevel: asynq.FatalLevel,
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		write(ctx, id)
		xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, End: true})
		b, _ := json.Marshal(&jobs.Result{ID: id, Queue: jobs.DefaultQueue, Status: jobs.StatusSucceeded, Outputs: []jobs.OutputDoc{}})
		if _, err := task.ResultWriter().Write(b); err != nil {
			return err
		}
		return rdb.Publish(ctx, keys.DoneChannel, id).Err()
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

// xadd appends an event to a job's live output and returns its ID (a
// failure is t.Error: it may run in the stand-in worker).
func xadd(t *testing.T, rdb *redis.Client, id string, e jobs.LogEvent) string {
	eid, err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: keys.LiveLog(id), Values: e.Values()}).Result()
	if err != nil {
		t.Error(err)
	}
	return eid
}

// sseFull is an event with its ID.
type sseFull struct{ id, name, data string }

// readFull reads the next event, with its ID line, skipping comments.
func readFull(r *bufio.Reader) (sseFull, error) {
	var ev sseFull
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && ev.name != "":
			return ev, nil
		case strings.HasPrefix(line, "id: "):
			ev.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
}

// openEvents opens a job's event stream with extra headers and a query.
func openEvents(t *testing.T, ctx context.Context, f *fixture, token, id, query string, h http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/jobs/"+id+"/events"+query, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// logData is the data of a log event ("" for a marker or an End).
func logData(t *testing.T, ev sseFull) jobs.LogEvent {
	t.Helper()
	var e jobs.LogEvent
	if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
		t.Fatalf("log event %q: %v", ev.data, err)
	}
	if e.ID != ev.id {
		t.Fatalf("log event with id %q carries entry %q", ev.id, e.ID)
	}
	return e
}

// rest reads the events left until the stream ends, as "name:data" for
// logs ("log:DATA", "log:end" for an End) and the name for others.
func rest(t *testing.T, r *bufio.Reader) []string {
	t.Helper()
	var out []string
	for {
		ev, err := readFull(r)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if ev.name == "log" {
			e := logData(t, ev)
			if e.End {
				out = append(out, "log:end")
			} else {
				out = append(out, "log:"+e.Data)
			}
			continue
		}
		out = append(out, ev.name)
	}
}

// TestEventStreamServesLiveOutput: a follower that connects after the job
// has written gets its state, the backlog as log events (each with its
// stream entry ID), then the output written while it follows, and "done"
// after the last of it. A follower that reconnects with Last-Event-ID (or
// ?after=) gets what came after that event only; ?follow=false gives the
// output so far and the state, and ends.
func TestEventStreamServesLiveOutput(t *testing.T) {
	f, rdb := liveServer(t, 10)
	a := f.submit(t, tokens["acme"], script("s.sh", "true"))
	if a.code != http.StatusCreated {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	id := a.job(t).ID
	var ids []string
	for _, d := range []string{"one\n", "two\n"} {
		ids = append(ids, xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: d}))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The output so far, then the state; the job is still pending.
	resp := openEvents(t, ctx, f, tokens["acme"], id, "?follow=false", nil)
	if got := strings.Join(rest(t, bufio.NewReader(resp.Body)), " "); got != "log:one\n log:two\n state" {
		t.Fatalf("follow=false: %q, want the two entries then the state", got)
	}

	release := make(chan struct{})
	standIn(t, f, rdb, func(ctx context.Context, id string) {
		<-release
		xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: "three\n"})
		xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Dropped: 100})
	})
	resp = openEvents(t, ctx, f, tokens["acme"], id, "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	r := bufio.NewReader(resp.Body)
	first, err := readFull(r)
	if err != nil || first.name != "state" || first.id != "0" {
		t.Fatalf("first event %+v %v, want a state event with id 0 (no output yet)", first, err)
	}
	for i, want := range []string{"one\n", "two\n"} {
		ev, err := readFull(r)
		if err != nil || ev.name != "log" || ev.id != ids[i] || logData(t, ev).Data != want || logData(t, ev).Stream != "stdout" {
			t.Fatalf("backlog event %d: %+v %v, want log %q with id %s", i, ev, err, want, ids[i])
		}
	}
	close(release)
	var seen []string
	var lastID string
	for {
		ev, err := readFull(r)
		if err != nil {
			t.Fatalf("stream ended without done after %v: %v", seen, err)
		}
		if ev.name == "state" {
			continue // active, read while the output flows
		}
		seen = append(seen, ev.name)
		if ev.name == "done" {
			if ev.id != lastID || !strings.Contains(ev.data, `"state":"done"`) {
				t.Fatalf("done event %+v, want the job done with the last log event's ID %s", ev, lastID)
			}
			break
		}
		e := logData(t, ev)
		lastID = ev.id
		seen[len(seen)-1] = fmt.Sprintf("log:%s:%q:%d:%v", e.Stream, e.Data, e.Dropped, e.End)
	}
	if want := `log:stderr:"three\n":0:false log::"":100:false log::"":0:true done`; strings.Join(seen, " ") != want {
		t.Fatalf("live events %q, want %q", strings.Join(seen, " "), want)
	}

	// Resuming after the first entry: the job is done, so what is left
	// of its output, then done.
	for _, resume := range []struct {
		query string
		h     http.Header
	}{
		{"", http.Header{"Last-Event-Id": {ids[0]}}},
		{"?after=" + url.QueryEscape(ids[0]), nil},
		// The header a reconnecting client sends wins over the URL's.
		{"?after=0", http.Header{"Last-Event-Id": {ids[0]}}},
	} {
		resp := openEvents(t, ctx, f, tokens["acme"], id, resume.query, resume.h)
		if got := strings.Join(rest(t, bufio.NewReader(resp.Body)), " "); got != "log:two\n log:three\n log: log:end done" {
			t.Fatalf("resumed with %q %v: %q, want the entries after the first, then done", resume.query, resume.h, got)
		}
	}
}

// TestEventStreamRefusals: a position that is not an entry ID, a follow
// that is neither true nor false, and another tenant's job are refused
// before the stream starts, naming what is wrong (the job: 404, as if it
// did not exist).
func TestEventStreamRefusals(t *testing.T) {
	f, rdb := liveServer(t, 11)
	a := f.submit(t, tokens["acme"], script("s.sh", "true"))
	if a.code != http.StatusCreated {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	id := a.job(t).ID
	xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: "acme's secret"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		query, field string
		h            http.Header
	}{
		{"?after=abc", "after", nil},
		{"", "Last-Event-ID", http.Header{"Last-Event-Id": {"1-2-3"}}},
		{"?follow=maybe", "follow", nil},
	} {
		resp := openEvents(t, ctx, f, tokens["acme"], id, c.query, c.h)
		b, _ := io.ReadAll(resp.Body)
		ans := answer{code: resp.StatusCode, body: b}
		if ans.code != http.StatusBadRequest {
			t.Fatalf("%s %v: %d %s, want 400", c.query, c.h, ans.code, b)
		}
		if e := ans.err(t); e.Field != c.field || !strings.Contains(e.Message, c.field) {
			t.Errorf("%s %v: %+v, want the field %s named", c.query, c.h, e, c.field)
		}
	}
	for _, q := range []string{"", "?follow=false"} {
		resp := openEvents(t, ctx, f, tokens["beta"], id, q, nil)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(b), "secret") {
			t.Fatalf("beta reads acme's job%s: %d %s, want 404", q, resp.StatusCode, b)
		}
	}
	c, err := NewClient(f.url, tokens["beta"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Logs(ctx, id, "", false, func(jobs.LogEvent) error { t.Fatal("beta read acme's output"); return nil }); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("the client as beta: %v, want 404", err)
	}
}

// TestClientFollowsAcrossAReconnect: api.Client follows a job's output
// through a connection that breaks midway, reopening the stream with
// Last-Event-ID, so it gets every event once, in order, and the done state
// after them; Logs without follow gets the output so far.
func TestClientFollowsAcrossAReconnect(t *testing.T) {
	f, rdb := liveServer(t, 12)
	a := f.submit(t, tokens["acme"], script("s.sh", "true"))
	if a.code != http.StatusCreated {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	id := a.job(t).ID
	var ids []string
	for i := range 4 {
		ids = append(ids, xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Stream: "stdout", Data: fmt.Sprintf("line %d\n", i)}))
	}

	// A proxy that cuts the first event stream after its second log
	// event, and records the Last-Event-ID of each one it forwards.
	target, _ := url.Parse(f.url)
	var mu sync.Mutex
	var resumes []string
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	armed := false
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cut := armed && strings.HasSuffix(r.URL.Path, "/events")
		armed = armed && !cut
		resumes = append(resumes, r.Header.Get("Last-Event-ID"))
		mu.Unlock()
		if !cut {
			rp.ServeHTTP(w, r)
			return
		}
		resp := openEvents(t, r.Context(), f, tokens["acme"], id, "", nil)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(resp.StatusCode)
		br := bufio.NewReader(resp.Body)
		for logs := 0; logs < 2; {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(w, line)
			if line == "\n" {
				w.(http.Flusher).Flush()
			}
			if line == "event: log\n" {
				logs++
			}
		}
		// The second log event's data and blank line, then the cut.
		for range 2 {
			line, _ := br.ReadString('\n')
			io.WriteString(w, line)
		}
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	ps := httptest.NewServer(proxy)
	defer ps.Close()

	c, err := NewClient(ps.URL, tokens["acme"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sofar []string
	if err := c.Logs(ctx, id, ids[0], false, func(e jobs.LogEvent) error { sofar = append(sofar, e.Data); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(sofar, "") != "line 1\nline 2\nline 3\n" {
		t.Fatalf("Logs after the first entry, not following: %q", sofar)
	}
	mu.Lock()
	armed, resumes = true, nil
	mu.Unlock()

	standIn(t, f, rdb, func(ctx context.Context, id string) {
		xadd(t, rdb, id, jobs.LogEvent{Attempt: 1, Stream: "stderr", Data: "late\n"})
	})
	var order []string
	st, err := c.Follow(ctx, id, "", func(st *jobs.JobStatus) {
		if st.State == jobs.StateDone {
			order = append(order, "done")
		}
	}, func(e jobs.LogEvent) error {
		order = append(order, e.Stream+":"+e.Data)
		return nil
	})
	if err != nil || st.State != jobs.StateDone {
		t.Fatalf("follow: %+v %v", st, err)
	}
	want := "stdout:line 0\n stdout:line 1\n stdout:line 2\n stdout:line 3\n stderr:late\n : done"
	if strings.Join(order, " ") != want {
		t.Fatalf("followed %q, want %q (every event once, in order, done last)", strings.Join(order, " "), want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(resumes) < 2 || resumes[0] != "" || resumes[1] != ids[1] {
		t.Fatalf("the streams' Last-Event-IDs %q, want none then %s (the last event before the cut)", resumes, ids[1])
	}
}
