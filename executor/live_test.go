package executor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// liveRecorder is a LiveOutput that keeps every chunk, and when each came.
type liveRecorder struct {
	mu     sync.Mutex
	chunks []liveChunk
}

type liveChunk struct {
	stream string
	data   string
	at     time.Time
}

func (r *liveRecorder) Write(stream string, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.chunks = append(r.chunks, liveChunk{stream, string(p), time.Now()})
}

// text is what came on stream, and the whole output as a sequence of
// stream-tagged pieces, consecutive chunks of one stream joined.
func (r *liveRecorder) text(stream string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, c := range r.chunks {
		if c.stream == stream {
			b.WriteString(c.data)
		}
	}
	return b.String()
}

func (r *liveRecorder) sequence() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.chunks {
		for _, line := range strings.SplitAfter(c.data, "\n") {
			if line != "" {
				out = append(out, c.stream+":"+line)
			}
		}
	}
	return out
}

// The tee hands the LiveOutput what each drain read, from both pipes one
// chunk at a time, only while one is named; the logs get everything.
func TestLiveTeeForwardsOnlyWhileFollowed(t *testing.T) {
	dir := t.TempDir()
	logOf := func(name string) *LogCapture {
		c, err := NewLogCapture(filepath.Join(dir, name), 1<<20, 1<<10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var tee liveTee
	out, errs := teeCapture{logOf("out"), &tee, StreamStdout}, teeCapture{logOf("err"), &tee, StreamStderr}
	out.Write([]byte("before\n"))
	rec := &liveRecorder{}
	tee.set(rec)
	out.Write([]byte("a\n"))
	errs.Write([]byte("b\n"))
	out.Write(nil)
	tee.set(nil)
	errs.Write([]byte("after\n"))
	if got, want := strings.Join(rec.sequence(), ""), "stdout:a\nstderr:b\n"; got != want {
		t.Fatalf("live output %q, want %q", got, want)
	}
	out.log.Close()
	errs.log.Close()
	for name, want := range map[string]string{"out": "before\na\n", "err": "b\nafter\n"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("log %s holds %q, want %q: the log gets everything", name, b, want)
		}
	}
}

// followed runs spec's job through runner as the worker does (Prepare,
// Create beside writing the files, Follow, Run) with files in its JobDir,
// and returns the outcome, its logs and what was followed.
func followed(t *testing.T, runner Runner, spec Spec, files map[string]string, wantMode string) (*Outcome, *liveRecorder, string, string) {
	t.Helper()
	ctx := context.Background()
	sb, err := runner.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Release(ctx)
	created := make(chan error, 1)
	go func() { created <- sb.Create(ctx) }()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(sb.JobDir(), name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	rec := &liveRecorder{}
	sb.Follow(rec)
	out, err := sb.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out.StartMode != wantMode || out.ExitCode == nil || *out.ExitCode != 0 {
		t.Fatalf("%s: start mode %q exit %s stderr %q, want %q and 0", spec.Name, out.StartMode, exitCode(out), out.Stderr.Tail, wantMode)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	return out, rec, read(out.Stdout.Path), read(out.Stderr.Path)
}

// checkFollowed: the followed output is the logs' whole, in the order the
// job wrote it across both streams, and its first line came well before
// the sandbox was gone.
func checkFollowed(t *testing.T, mode string, out *Outcome, rec *liveRecorder, stdout, stderr string, want []string) {
	t.Helper()
	if got := rec.text(StreamStdout); got != stdout {
		t.Errorf("%s: followed stdout %q, log %q", mode, got, stdout)
	}
	if got := rec.text(StreamStderr); got != stderr {
		t.Errorf("%s: followed stderr %q, log %q", mode, got, stderr)
	}
	if got := rec.sequence(); strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("%s: followed output in order %q, want %q", mode, got, want)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.chunks) == 0 {
		t.Fatalf("%s: nothing was followed", mode)
	}
	first := rec.chunks[0].at
	// The job sleeps 0.3 s after its first line; that line was heard
	// before the job ended, not handed over with the logs at the end.
	if !first.Before(out.FinishedAt.Add(-200 * time.Millisecond)) {
		t.Errorf("%s: the first chunk came at %s, the sandbox was gone at %s", mode, first.Format(time.StampMilli), out.FinishedAt.Format(time.StampMilli))
	}
}

// A cold and a warm sandbox hand out what the job writes as it writes it,
// both streams interleaved as written; the logs are unchanged.
func TestFollowColdAndWarm(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	script := "echo o1; sleep 0.3; echo e1 >&2; sleep 0.1; echo o2; sleep 0.1; echo e2 >&2\n"
	want := []string{"stdout:o1\n", "stderr:e1\n", "stdout:o2\n", "stderr:e2\n"}
	job := sleeper(image)
	job.Name = "live-cold"
	job.Args = []string{"/bin/sh", JobMount + "/job.sh"}
	job.Env = []string{"PATH=/usr/bin:/bin", "HOME=/work"}
	job.Limits.Timeout = time.Minute
	out, rec, stdout, stderr := followed(t, r, job, map[string]string{"job.sh": script}, StartCold)
	checkFollowed(t, StartCold, out, rec, stdout, stderr, want)

	pool, err := NewWarmRunner(r, sleeper(image), 1)
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	defer pool.Close(ctx)
	waitReady(t, pool, 1)
	job.Name = "live-warm"
	out, rec, stdout, stderr = followed(t, pool, job, map[string]string{"job.sh": script}, StartWarm)
	checkFollowed(t, StartWarm, out, rec, stdout, stderr, want)
}

// A sandbox restored from a snapshot template, on the job's path or ahead
// of it in a pool, or created again cold when the restore failed, hands
// out what the job writes as it writes it.
func TestFollowRestored(t *testing.T) {
	r, p, tmpl, rootfs := snapshotRunner(t)
	ctx := context.Background()
	script := "import sys, time\nprint('o1', flush=True)\ntime.sleep(0.3)\nprint('e1', file=sys.stderr, flush=True)\ntime.sleep(0.1)\nprint('o2', flush=True)\ntime.sleep(0.1)\nprint('e2', file=sys.stderr)\n"
	want := []string{"stdout:o1\n", "stderr:e1\n", "stdout:o2\n", "stderr:e2\n"}
	spec := pythonSpec(rootfs)
	out, rec, stdout, stderr := followed(t, p, spec, map[string]string{"job.py": script}, StartRestored)
	checkFollowed(t, StartRestored, out, rec, stdout, stderr, want)

	if err := p.StartPools(snapshotLimits(), 1); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if ready, _, _ := p.PoolStats(); ready == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restore pool has none ready after a minute")
		}
	}
	out, rec, stdout, stderr = followed(t, p, spec, map[string]string{"job.py": script}, StartRestored)
	if _, hits, _ := p.PoolStats(); hits != 1 {
		t.Fatalf("the job did not take the pooled sandbox: %d hits", hits)
	}
	checkFollowed(t, "pooled", out, rec, stdout, stderr, want)

	// A template corrupted after it was loaded: the restore fails and the
	// sandbox's container is created again, cold, with new pipes.
	dir := filepath.Join(t.TempDir(), tmpl.Info.Key)
	if err := os.CopyFS(dir, os.DirFS(tmpl.Dir)); err != nil {
		t.Fatal(err)
	}
	corrupt := *tmpl
	corrupt.Dir = dir
	if err := os.WriteFile(filepath.Join(corrupt.CheckpointDir(), templateStateFile), []byte("not a checkpoint"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken, err := NewSnapshotRunner(r, []*Template{&corrupt})
	if err != nil {
		t.Fatal(err)
	}
	out, rec, stdout, stderr = followed(t, broken, spec, map[string]string{"job.py": script}, StartCold)
	if _, fallbacks, _ := broken.Stats(); fallbacks != 1 {
		t.Fatalf("the corrupt template did not fall back cold: %d fallbacks", fallbacks)
	}
	checkFollowed(t, "fallen back cold", out, rec, stdout, stderr, want)
}
