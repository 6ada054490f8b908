package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
)

// heard is a live output entry and whether the job was still running when
// the reader had it.
type heard struct {
	jobs.LogEvent
	running bool
}

// followLive reads job id's live output stream with XREAD as a follower
// would, from its start until the End entry of the attempt that finishes
// the job, and notes for each batch whether the job was still active.
func followLive(t *testing.T, rdb *redis.Client, id string, limit time.Duration) []heard {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var out []heard
	last := "0"
	for {
		streams, err := rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{keys.LiveLog(id), last}, Block: 200 * time.Millisecond, Count: 1000}).Result()
		if errors.Is(err, redis.Nil) {
			if st, err := env.client.Status(ctx, id); err == nil && st.State == jobs.StateDone && len(out) == 0 {
				t.Fatalf("job %s completed with nothing in its live output", id)
			}
			continue
		}
		if err != nil {
			t.Fatalf("XREAD of %s after %s: %v (heard %d entries)", id, last, err, len(out))
		}
		st, err := env.client.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range streams[0].Messages {
			e, err := jobs.DecodeLogEvent(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, heard{e, st.State == jobs.StateActive})
			last = m.ID
			if e.End {
				return out
			}
		}
	}
}

// A job printing a line every 100 ms for 3 s is heard line by line while
// it runs, stdout and stderr in the order written, all of it, ending with
// the End entry; the stored logs are as before; once the job is over the
// stream expires with its result.
func TestLiveOutputWhileTheJobRuns(t *testing.T) {
	script := file(t, "live.sh", `i=1
while [ $i -le 30 ]; do
	if [ $((i % 5)) -eq 0 ]; then echo "err $i" >&2; else echo "out $i"; fi
	sleep 0.1
	i=$((i + 1))
done
`)
	rdb := redisClient(t)
	enq := submit(t, jobs.Submission{Script: script})
	entries := followLive(t, rdb, enq.ID, 3*time.Minute)
	r := waitResult(t, enq.ID, time.Minute)
	wantStatus(t, r, jobs.StatusSucceeded)

	var lines, want []string
	var stdout, stderr strings.Builder
	whileRunning := 0
	for _, e := range entries {
		if e.Attempt != r.Attempt || e.Dropped != 0 {
			t.Fatalf("entry %+v: want attempt %d's, nothing dropped", e.LogEvent, r.Attempt)
		}
		if e.Stream == "" {
			continue
		}
		if e.running {
			whileRunning += strings.Count(e.Data, "\n")
		}
		map[string]*strings.Builder{"stdout": &stdout, "stderr": &stderr}[e.Stream].WriteString(e.Data)
		for _, l := range strings.SplitAfter(e.Data, "\n") {
			if l != "" {
				lines = append(lines, e.Stream+": "+l)
			}
		}
	}
	for i := 1; i <= 30; i++ {
		if i%5 == 0 {
			want = append(want, fmt.Sprintf("stderr: err %d\n", i))
		} else {
			want = append(want, fmt.Sprintf("stdout: out %d\n", i))
		}
	}
	if strings.Join(lines, "") != strings.Join(want, "") {
		t.Fatalf("live output, in order:\n%s\nwant:\n%s", strings.Join(lines, ""), strings.Join(want, ""))
	}
	// The job printed for 3 s; a follower heard most of it while the job
	// was still active, not all at its end.
	if whileRunning < 10 {
		t.Fatalf("only %d of the 30 lines were heard while the job was active", whileRunning)
	}
	if stdout.String() != r.Stdout.Tail || stderr.String() != r.Stderr.Tail {
		t.Fatalf("live output differs from the stored logs:\n%q\n%q\nwant:\n%q\n%q", stdout.String(), stderr.String(), r.Stdout.Tail, r.Stderr.Tail)
	}
	ttl, err := rdb.PTTL(context.Background(), keys.LiveLog(enq.ID)).Result()
	if retention := env.cfg.ResultRetention; err != nil || ttl > retention || ttl < retention-5*time.Minute {
		t.Fatalf("the finished job's stream expires in %v (%v), want about the result retention %v", ttl, err, retention)
	}
	t.Logf("%d entries, %d of 30 lines heard while the job was active", len(entries), whileRunning)
}

// A 100 MB burst is cut at the live output cap: the bytes kept and the
// markers' counts add up to every byte written, the job succeeds and its
// stored log counts the whole burst.
func TestLiveOutputBurstIsCapped(t *testing.T) {
	const burst = 100_000_000
	script := file(t, "burst.sh", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x\necho done >&2\n", burst))
	rdb := redisClient(t)
	enq := submit(t, jobs.Submission{Script: script})
	r := waitResult(t, enq.ID, 3*time.Minute)
	wantStatus(t, r, jobs.StatusSucceeded)
	if r.Stdout.Bytes != burst {
		t.Fatalf("the stored stdout counts %d bytes, want %d", r.Stdout.Bytes, burst)
	}
	msgs, err := rdb.XRange(context.Background(), keys.LiveLog(enq.ID), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var kept, dropped int64
	markers := 0
	for i, m := range msgs {
		e, err := jobs.DecodeLogEvent(m)
		if err != nil {
			t.Fatal(err)
		}
		if e.Stream == "stdout" && strings.Trim(e.Data, "x") != "" {
			t.Fatalf("entry %d holds stdout that is not the burst's: %.40q", i, e.Data)
		}
		kept += int64(len(e.Data))
		if e.Dropped > 0 {
			dropped += e.Dropped
			markers++
		}
		if e.End != (i == len(msgs)-1) {
			t.Fatalf("entry %d of %d: End %v; want it on the last entry only", i+1, len(msgs), e.End)
		}
	}
	written := int64(burst + len("done\n"))
	if markers == 0 || kept > env.cfg.Worker.LiveOutputBytes || kept+dropped != written {
		t.Fatalf("kept %d bytes (cap %d) and dropped %d in %d markers: want them to add up to the %d written", kept, env.cfg.Worker.LiveOutputBytes, dropped, markers, written)
	}
	t.Logf("%d entries: %d bytes kept, %d dropped in %d markers; run %d ms", len(msgs), kept, dropped, markers, r.DurationMS)
}
