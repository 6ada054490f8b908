package s3compat

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// jobTimeout bounds one job of the core run, queueing included.
const jobTimeout = 90 * time.Second

// coreScript reads its input, waits a moment (so that a fault can strike
// while it runs), and writes a text output, a binary one and stdout.
const coreScript = `
import os, sys, time
data = open(os.path.join(os.environ["INPUT_DIR"], "numbers.csv")).read()
nums = [int(x) for x in data.split()]
time.sleep(float(sys.argv[1]))
out = os.environ["OUTPUT_DIR"]
open(os.path.join(out, "sum.txt"), "w").write(str(sum(nums)) + "\n")
os.makedirs(os.path.join(out, "raw"))
open(os.path.join(out, "raw", "bytes.bin"), "wb").write(bytes(range(256)) * 64)
print("summed", len(nums), "numbers")
`

// core is one run of the core subset against an S3 server.
type core struct {
	// Name names the bucket, the queue and the state directory.
	Name string
	// Server is the store, with credentials that may create the bucket
	// and set its lifecycle.
	Server testenv.S3Server
	// Sleep is how long the job waits between reading its input and
	// writing its outputs.
	Sleep string
	// WhileRunning, when set, is called once the job is running.
	WhileRunning func()
}

// run prepares the bucket as `sandq s3 setup` does, starts a worker on a
// real runsc runner, runs one job with an input and checks its result,
// outputs and logs through their presigned links. It returns the result
// and the worker's store.
func (c core) run(t *testing.T) (*jobs.Result, *storage.Store) {
	t.Helper()
	ctx := context.Background()
	queue := "s3compat-" + c.Name
	state := filepath.Join(env.state, c.Name)
	cfg := jobs.Config{
		RedisAddr: env.suite.Stack.RedisAddr,
		Storage: storage.Config{Endpoint: c.Server.Endpoint, AccessKey: c.Server.AccessKey, SecretKey: c.Server.SecretKey,
			Region: c.Server.Region, Bucket: "sandq-" + c.Name},
		Worker: jobs.WorkerConfig{
			Concurrency: 1, StateDir: state, ImageDir: env.suite.Image.Dir, Image: env.suite.Image.Name,
			Queues: map[string]int{queue: 1}, ShutdownGrace: 5 * time.Second,
		},
		MaxRetry:     1,
		PollInterval: 100 * time.Millisecond,
	}.WithDefaults()
	store, err := storage.New(cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	// What `sandq s3 setup` does, with the same settings as the worker.
	days := cfg.ObjectExpiryDays()
	if err := store.EnsureBucket(ctx); err != nil {
		t.Fatalf("s3 setup: %v", err)
	}
	if err := store.SetPrefixExpiry(ctx, storage.ObjectPrefix, days); err != nil {
		t.Fatalf("s3 setup: %v", err)
	}
	if got, err := store.PrefixExpiry(ctx, storage.ObjectPrefix); err != nil || got != days {
		t.Fatalf("the expiry rule read back: %d days, %v; want %d", got, err, days)
	}

	start := time.Now()
	w := sandqtest.NewWorker(t, cfg, executor.RunscConfig{StateDir: state, Logger: env.suite.Logger}, store)
	t.Logf("worker started in %s", time.Since(start).Round(time.Millisecond))

	enq, err := w.Client.Enqueue(ctx, jobs.Submission{
		Script: file(t, "sum.py", coreScript), Inputs: []jobs.File{file(t, "numbers.csv", "1\n2\n3\n4\n")},
		Args: []string{c.Sleep}, Queue: queue,
	})
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, jobTimeout)
	defer cancel()
	var once sync.Once
	st, err := w.Client.Wait(wctx, enq.ID, func(st *jobs.JobStatus) {
		if st.State == jobs.StateActive && c.WhileRunning != nil {
			once.Do(c.WhileRunning)
		}
	})
	if err != nil {
		t.Fatalf("wait for %s: %v (last state %+v)", enq.ID, err, st)
	}
	r := st.Result
	t.Logf("job ran in %s", time.Since(start).Round(time.Millisecond))
	if r.Status != jobs.StatusSucceeded || r.Attempt != 1 {
		t.Fatalf("status %s on attempt %d (reason %q), want succeeded on the first", r.Status, r.Attempt, r.Reason)
	}
	checkOutputs(t, r)
	return r, store
}

// wantOutputs are the bytes of the core job's outputs.
var wantOutputs = map[string][]byte{
	"sum.txt":       []byte("10\n"),
	"raw/bytes.bin": bytes.Repeat(allBytes(), 64),
}

// allBytes is every byte value once, in order.
func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// checkOutputs downloads every output and the stdout log through their
// presigned links: the right bytes, served as attachments.
func checkOutputs(t *testing.T, r *jobs.Result) {
	t.Helper()
	if len(r.Outputs) != len(wantOutputs) {
		t.Fatalf("outputs %+v, want %d", r.Outputs, len(wantOutputs))
	}
	for _, o := range r.Outputs {
		resp, body := testenv.Fetch(t, o.URL)
		sum := sha256.Sum256(body)
		if !bytes.Equal(body, wantOutputs[o.Path]) || hex.EncodeToString(sum[:]) != o.SHA256 || int64(len(body)) != o.Size {
			t.Errorf("%s: downloaded %d bytes (sha256 %x); want %d bytes, result says %d bytes, %s", o.Path, len(body), sum, len(wantOutputs[o.Path]), o.Size, o.SHA256)
		}
		want := storage.ContentDisposition(filepath.Base(o.Path))
		if cd := resp.Header.Get("Content-Disposition"); cd != want {
			t.Errorf("%s: served with Content-Disposition %q, want %q", o.Path, cd, want)
		}
	}
	resp, logs := testenv.Fetch(t, r.Stdout.URL)
	if string(logs) != r.Stdout.Tail || !strings.Contains(string(logs), "summed 4 numbers") {
		t.Errorf("stdout link: %q; the result's tail %q", logs, r.Stdout.Tail)
	}
	if cd := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") {
		t.Errorf("stdout link served with Content-Disposition %q, want an attachment", cd)
	}
}

func file(t *testing.T, name, body string) jobs.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := jobs.LocalFile(p, name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestCoreOnSeaweedFS: the core subset passes on SeaweedFS: bucket and
// expiry rule set up, worker start (it reads the rule back), a job's input
// fetched, its outputs and logs uploaded and downloaded through presigned
// links as attachments.
func TestCoreOnSeaweedFS(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedImage(t)
	start := time.Now()
	srv := testenv.SeaweedFS(t, testenv.S3Options{})
	t.Logf("SeaweedFS answered in %s", time.Since(start).Round(time.Millisecond))
	core{Name: "seaweedfs", Server: srv, Sleep: "0"}.run(t)
}

// TestCoreOnDistributedMinioWithANodeKilled: on a 4-node erasure-coded
// MinIO behind a balancer, one node is killed while the job runs; the job
// still succeeds on its first attempt and its links download, with the
// node still down and again once it is back.
func TestCoreOnDistributedMinioWithANodeKilled(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedImage(t)
	m := testenv.MinioDistributed(t, testenv.MinioSetOptions{})
	const k = 1
	killed := false
	r, _ := core{Name: "minioset", Server: m.Server(), Sleep: "3", WhileRunning: func() {
		m.Kill(t, k)
		killed = true
	}}.run(t)
	if !killed {
		t.Fatal("premise: the node was not killed while the job ran")
	}
	m.Restart(t, k)
	checkOutputs(t, r)
}
