package worker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// liveEntries reads a job's whole live output stream, decoded.
func liveEntries(t *testing.T, rdb redis.UniversalClient, job string) []jobs.LogEvent {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), keys.LiveLog(job), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]jobs.LogEvent, 0, len(msgs))
	for _, m := range msgs {
		e, err := jobs.DecodeLogEvent(m)
		if err != nil {
			t.Fatalf("entry %d of %d: %v", len(out)+1, len(msgs), err)
		}
		out = append(out, e)
	}
	return out
}

// liveSummary is a stream's entries in short: "stdout:DATA", "stderr:DATA",
// "dropped:N", "end", each with its attempt; and the data and drops summed.
func liveSummary(entries []jobs.LogEvent) (seq []string, data string, dropped int64) {
	var b strings.Builder
	for _, e := range entries {
		switch {
		case e.Stream != "":
			seq = append(seq, fmt.Sprintf("%d %s:%s", e.Attempt, e.Stream, e.Data))
			b.WriteString(e.Data)
		case e.Dropped > 0:
			seq = append(seq, fmt.Sprintf("%d dropped:%d", e.Attempt, e.Dropped))
			dropped += e.Dropped
		}
		if e.End {
			seq = append(seq, fmt.Sprintf("%d end", e.Attempt))
		}
	}
	return seq, b.String(), dropped
}

func liveRedis(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// checkTTL fails t unless key expires in (want-slack, want].
func checkTTL(t *testing.T, rdb redis.UniversalClient, key string, want time.Duration) {
	t.Helper()
	ttl, err := rdb.PTTL(context.Background(), key).Result()
	if err != nil || ttl > want || ttl < want-time.Minute {
		t.Fatalf("%s expires in %v (%v), want about %v", key, ttl, err, want)
	}
}

// A burst past the cap keeps exactly the cap's bytes, in order across the
// streams, and one marker counts the rest; the End entry is last, and the
// stream expires after the result retention once the attempt is over.
func TestLiveOutputCap(t *testing.T) {
	rdb := liveRedis(t)
	var counted atomic.Int64
	l := newLiveOutput(rdb, "job-cap", 2, 4096, 3*time.Hour, 2*time.Hour, slog.New(slog.DiscardHandler), func(n int64) { counted.Add(n) })
	l.flushEvery = time.Hour // everything goes at Close
	l.start()
	var written strings.Builder
	for i := range 50 {
		stream, c := executor.StreamStdout, byte('a'+i%26)
		if i%3 == 2 {
			stream, c = executor.StreamStderr, '!'
		}
		chunk := strings.Repeat(string(c), 199) + "\n"
		written.WriteString(chunk)
		l.Write(stream, []byte(chunk))
	}
	l.Close()
	// Written after Close (it cannot be, by a sandbox): not sent.
	l.Write(executor.StreamStdout, []byte("late"))
	entries := liveEntries(t, rdb, "job-cap")
	seq, data, dropped := liveSummary(entries)
	if data != written.String()[:4096] {
		t.Fatalf("kept %d bytes, not the first 4096 written in order:\n%q", len(data), data)
	}
	if total := int64(written.Len()); dropped != total-4096 || counted.Load() != dropped {
		t.Fatalf("dropped %d in markers, %d counted; want %d", dropped, counted.Load(), total-4096)
	}
	if n := len(seq); n < 3 || seq[n-1] != "2 end" || seq[n-2] != fmt.Sprintf("2 dropped:%d", dropped) {
		t.Fatalf("the stream ends %q, want the marker then the End entry", seq[max(0, n-3):])
	}
	for _, e := range entries {
		if e.Attempt != 2 {
			t.Fatalf("entry %+v is not attempt 2's", e)
		}
	}
	// The order of the streams is kept: every third chunk is stderr's.
	if seq[0] != "2 stdout:"+strings.Repeat("a", 199)+"\n"+strings.Repeat("b", 199)+"\n" || !strings.HasPrefix(seq[1], "2 stderr:!!!") {
		t.Fatalf("the first entries are %.60q, want a and b on stdout, then stderr", seq[:2])
	}
	checkTTL(t, rdb, keys.LiveLog("job-cap"), 2*time.Hour)
}

// While the attempt runs, what it writes reaches the stream within a
// flush, consecutive chunks of a stream joined and the streams in the
// order written; the stream expires after the running expiry until the
// output is over.
func TestLiveOutputWhileRunning(t *testing.T) {
	rdb := liveRedis(t)
	l := newLiveOutput(rdb, "job-run", 1, 1<<20, 3*time.Hour, 2*time.Hour, slog.New(slog.DiscardHandler), nil)
	l.flushEvery = 10 * time.Millisecond
	l.start()
	defer l.Close()
	l.Write(executor.StreamStdout, []byte("one "))
	l.Write(executor.StreamStdout, []byte("two\n"))
	l.Write(executor.StreamStderr, []byte("warn\n"))
	l.Write(executor.StreamStdout, []byte("three\n"))
	want := []string{"1 stdout:one two\n", "1 stderr:warn\n", "1 stdout:three\n"}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		seq, _, _ := liveSummary(liveEntries(t, rdb, "job-run"))
		if len(seq) == len(want) {
			if strings.Join(seq, "|") != strings.Join(want, "|") {
				t.Fatalf("entries %q, want %q", seq, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the stream holds %q, want %q", seq, want)
		}
	}
	checkTTL(t, rdb, keys.LiveLog("job-run"), 3*time.Hour)
	l.Close()
	seq, _, _ := liveSummary(liveEntries(t, rdb, "job-run"))
	if strings.Join(seq, "|") != strings.Join(append(want, "1 end"), "|") {
		t.Fatalf("after Close: %q", seq)
	}
	checkTTL(t, rdb, keys.LiveLog("job-run"), 2*time.Hour)
}

// When Redis falls behind, what does not fit the buffer is dropped, not
// waited for, and a marker in its place says how much; the job's later
// output follows it.
func TestLiveOutputRedisBehind(t *testing.T) {
	rdb := liveRedis(t)
	var counted atomic.Int64
	l := newLiveOutput(rdb, "job-slow", 1, 1<<20, time.Hour, time.Hour, slog.New(slog.DiscardHandler), func(n int64) { counted.Add(n) })
	l.bufferBytes, l.flushEvery = 1024, 10*time.Millisecond
	l.start()
	// Redis takes no writes for 1.5s: the first flush waits that long.
	if err := rdb.Do(context.Background(), "CLIENT", "PAUSE", "1500", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	a, b, c := strings.Repeat("a", 900), strings.Repeat("b", 900), "c\n"
	l.Write(executor.StreamStdout, []byte(a))
	// The flush holds a's 900 bytes (and its entry's overhead) of the
	// 1024 while it waits.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		sending := len(l.pending) == 0 && l.buffered > 0
		l.mu.Unlock()
		if sending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no flush began")
		}
	}
	l.Write(executor.StreamStderr, []byte(b))
	if counted.Load() != 900 {
		t.Fatalf("while Redis was behind %d bytes were dropped, want b's 900", counted.Load())
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if n, _ := rdb.XLen(context.Background(), keys.LiveLog("job-slow")).Result(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing in the stream 10s after the pause")
		}
	}
	l.Write(executor.StreamStdout, []byte(c))
	l.Close()
	seq, data, dropped := liveSummary(liveEntries(t, rdb, "job-slow"))
	want := []string{"1 stdout:" + a, "1 dropped:900", "1 stdout:" + c, "1 end"}
	if strings.Join(seq, "|") != strings.Join(want, "|") || data != a+c || dropped != 900 {
		t.Fatalf("entries %.200q, want %.200q", seq, want)
	}
}

// With no Redis at all, the output is dropped and counted, and Close
// returns.
func TestLiveOutputWithoutRedis(t *testing.T) {
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer dead.Close()
	var counted atomic.Int64
	l := newLiveOutput(dead, "job-dead", 1, 1<<20, time.Hour, time.Hour, slog.New(slog.DiscardHandler), func(n int64) { counted.Add(n) })
	l.flushEvery = 10 * time.Millisecond
	l.start()
	l.Write(executor.StreamStdout, []byte("hello\n"))
	time.Sleep(50 * time.Millisecond)
	l.Write(executor.StreamStderr, []byte("world\n"))
	l.Close()
	if counted.Load() != 12 {
		t.Fatalf("%d bytes counted as dropped, want the 12 written", counted.Load())
	}
}

// Through the worker: each attempt's output goes to the job's stream with
// its number and ends with its End entry, also an attempt that failed for
// the system; the stream expires with the task's result retention (the
// producer's, here unlike the worker's own); the metric counts what the
// cap dropped; with live output off there is no stream.
func TestLiveOutputThroughWorker(t *testing.T) {
	r := newFakeRig(t, func(c *jobs.Config) {
		c.ResultRetention = time.Hour
		c.Worker.LiveOutputBytes = 8
	})
	rdb := redis.NewClient(&redis.Options{Addr: services.Get(t).RedisAddr, DB: r.cfg.RedisDB})
	defer rdb.Close()
	ok := r.enqueue("succeed", nil)
	sys := r.enqueue("system error", nil)
	if st := r.wait(ok); st.Result.Status != jobs.StatusSucceeded {
		t.Fatalf("succeed: %+v", st.Result)
	}
	if st := r.wait(sys); st.Result.Status != jobs.StatusError {
		t.Fatalf("system error: %+v", st.Result)
	}
	// "hello\n" then "warn\n": the cap of 8 keeps "hello\nwa".
	seq, _, _ := liveSummary(liveEntries(t, rdb, ok))
	if want := []string{"1 stdout:hello\n", "1 stderr:wa", "1 dropped:3", "1 end"}; strings.Join(seq, "|") != strings.Join(want, "|") {
		t.Fatalf("the job's live output %q, want %q", seq, want)
	}
	checkTTL(t, rdb, keys.LiveLog(ok), jobs.DefaultResultRetention)
	if got := scrape(t, r.w.Metrics())["sandq_live_output_dropped_bytes_total"]; got != 3 {
		t.Errorf("sandq_live_output_dropped_bytes_total = %v, want 3", got)
	}
	seq, _, _ = liveSummary(liveEntries(t, rdb, sys))
	if want := []string{"1 end", "2 end"}; strings.Join(seq, "|") != strings.Join(want, "|") {
		t.Fatalf("the failing job's live output %q, want %q", seq, want)
	}

	off := newFakeRig(t, func(c *jobs.Config) { c.Worker.LiveOutputBytes = jobs.NoLiveOutput })
	offRDB := redis.NewClient(&redis.Options{Addr: services.Get(t).RedisAddr, DB: off.cfg.RedisDB})
	defer offRDB.Close()
	id := off.enqueue("succeed", nil)
	if st := off.wait(id); st.Result.Status != jobs.StatusSucceeded {
		t.Fatalf("with live output off: %+v", st.Result)
	}
	if n, err := offRDB.Exists(context.Background(), keys.LiveLog(id)).Result(); err != nil || n != 0 {
		t.Fatalf("with live output off the stream exists (%d, %v)", n, err)
	}
}

// A large chunk is cut into entries of at most liveEntryBytes; a job
// alternating streams a byte at a time fills the buffer with entries'
// overhead long before the cap, and the rest is dropped and counted.
func TestLiveOutputEntrySizes(t *testing.T) {
	rdb := liveRedis(t)
	l := newLiveOutput(rdb, "job-big", 1, 1<<20, time.Hour, time.Hour, slog.New(slog.DiscardHandler), nil)
	l.flushEvery = time.Hour
	l.start()
	l.Write(executor.StreamStdout, []byte(strings.Repeat("y", 40000)))
	l.Close()
	var sizes []int
	for _, e := range liveEntries(t, rdb, "job-big") {
		if e.Stream != "" {
			sizes = append(sizes, len(e.Data))
		}
	}
	if fmt.Sprint(sizes) != fmt.Sprint([]int{liveEntryBytes, liveEntryBytes, 40000 - 2*liveEntryBytes}) {
		t.Fatalf("entries of %v bytes", sizes)
	}

	l = newLiveOutput(rdb, "job-tiny", 1, 1<<20, time.Hour, time.Hour, slog.New(slog.DiscardHandler), nil)
	// Nothing is sent before Close, so the buffer alone bounds the entries
	// (a flush woken by the bytes waiting would make room for more).
	l.flushEvery, l.flushBytes = time.Hour, 1<<30
	l.start()
	const writes = 10000
	for i := range writes {
		l.Write([]string{executor.StreamStdout, executor.StreamStderr}[i%2], []byte{'.'})
	}
	l.Close()
	entries := liveEntries(t, rdb, "job-tiny")
	_, data, dropped := liveSummary(entries)
	if max := liveBufferBytes / (liveEntryOverhead + 1); len(entries) > max+2 || int64(len(data))+dropped != writes || dropped == 0 {
		t.Fatalf("%d entries (at most %d+2 fit), %d bytes kept, %d dropped of %d", len(entries), max, len(data), dropped, writes)
	}
}

// Every entry holds whole UTF-8 characters, however the output was cut:
// across writes (the pipe's reads), at the entry size and at a flush.
func TestLiveOutputEntriesEndOnCharacters(t *testing.T) {
	rdb := liveRedis(t)
	l := newLiveOutput(rdb, "job-utf8", 1, 1<<20, time.Hour, time.Hour, slog.New(slog.DiscardHandler), nil)
	l.flushEvery = time.Hour
	l.start()
	euro := []byte("€") // 3 bytes
	l.Write(executor.StreamStdout, euro[:1])
	l.flush(false) // the first byte waits for the rest
	l.Write(executor.StreamStdout, euro[1:])
	big := []byte("a" + strings.Repeat("€", liveEntryBytes)) // cut at 16KiB inside a character
	l.Write(executor.StreamStdout, big)
	l.Write(executor.StreamStderr, []byte("😀")[:2])
	l.Close() // the output is over: a partial character goes as it is
	entries := liveEntries(t, rdb, "job-utf8")
	var out strings.Builder
	for i, e := range entries {
		if e.Stream == executor.StreamStdout {
			if !utf8.ValidString(e.Data) {
				t.Errorf("entry %d of %d splits a character: %q...", i+1, len(entries), e.Data[max(0, len(e.Data)-4):])
			}
			out.WriteString(e.Data)
		}
	}
	if out.String() != "€"+string(big) {
		t.Fatalf("stdout of %d bytes, want %d", out.Len(), len("€")+len(big))
	}
	if last := entries[len(entries)-2]; last.Stream != executor.StreamStderr || last.Data != string([]byte("😀")[:2]) {
		t.Fatalf("the partial character at the end went as %+v", last)
	}
	if got := partialRune([]byte("ok\xff")); got != 0 {
		t.Errorf("output that is not UTF-8 is held back: %d bytes", got)
	}
}
