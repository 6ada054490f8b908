package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

// waitWorkerMetric waits up to a minute for a worker's metric to be want.
func waitWorkerMetric(t *testing.T, w *worker.Worker, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for workerMetric(t, w, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v after a minute, want %v", name, workerMetric(t, w, name), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A worker with warm sandboxes runs a job of the default shape in one: the
// job gets its own arguments, environment and inputs exactly as in a cold
// sandbox, and the result says it started warm. A job of another shape
// runs cold. Nothing is left when the worker stops.
func TestWarmSandboxes(t *testing.T) {
	queue := "warm-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.WarmSandboxes = 2
	x := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	waitWorkerMetric(t, x.Worker, "sandq_warm_sandboxes_ready", 2)

	script := `printf '%s|' "$0" "$#" "$@" > "$OUTPUT_DIR/args.txt"
cat "$INPUT_DIR/in.txt" >> "$OUTPUT_DIR/args.txt"
env | sort > "$OUTPUT_DIR/env.txt"
`
	run := func(lim jobs.LimitRequest) (*jobs.Result, map[string]string) {
		t.Helper()
		ctx := context.Background()
		enq, err := x.Client.Enqueue(ctx, jobs.Submission{
			Queue: queue, Script: file(t, "show args.sh", script), Inputs: []jobs.File{file(t, "in.txt", "the input")},
			Args: []string{"a b", "it's", ""}, Env: map[string]string{"GREETING": "hello 'world' $HOME"}, Limits: lim,
		})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		st, err := x.Client.Wait(wctx, enq.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := st.Result
		if res.Status != jobs.StatusSucceeded {
			t.Fatalf("job %s: %s %s; stderr %q", enq.ID, res.Status, res.Reason, res.Stderr.Tail)
		}
		outs := map[string]string{}
		for _, o := range res.Outputs {
			outs[o.Path] = string(download(t, o.URL))
		}
		return res, outs
	}

	warm, warmOut := run(jobs.LimitRequest{})
	if !warm.Timings.WarmStart {
		t.Fatalf("a job of the default shape did not start warm: %+v", warm.Timings)
	}
	if want := executor.JobMount + "/show args.sh|3|a b|it's||the input"; warmOut["args.txt"] != want {
		t.Errorf("args.txt %q, want %q", warmOut["args.txt"], want)
	}
	if hits := workerMetric(t, x.Worker, "sandq_warm_sandbox_hits_total"); hits != 1 {
		t.Errorf("hits %v, want 1", hits)
	}

	cold, coldOut := run(jobs.LimitRequest{MemoryBytes: 512 << 20})
	if cold.Timings.WarmStart {
		t.Fatal("a job with its own memory limit started warm")
	}
	if warmOut["args.txt"] != coldOut["args.txt"] {
		t.Errorf("arguments differ: warm %q, cold %q", warmOut["args.txt"], coldOut["args.txt"])
	}
	if warmOut["env.txt"] != coldOut["env.txt"] {
		t.Errorf("environments differ:\nwarm %q\ncold %q", warmOut["env.txt"], coldOut["env.txt"])
	}
	if want := "GREETING=hello 'world' $HOME\n"; !strings.Contains("\n"+coldOut["env.txt"], "\n"+want) {
		t.Errorf("env.txt %q has no line %q", coldOut["env.txt"], want)
	}
	if hits := workerMetric(t, x.Worker, "sandq_warm_sandbox_hits_total"); hits != 1 {
		t.Errorf("hits %v after a cold job, want 1", hits)
	}
	waitWorkerMetric(t, x.Worker, "sandq_warm_sandboxes_ready", 2)

	x.Stop()
	if ids, err := x.Runner.Containers(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("containers after the worker stopped: %v %v", ids, err)
	}
}

// otherRunner is a Runner that is not the runsc one.
type otherRunner struct{ executor.Runner }

// Warm sandboxes need the runsc runner; a worker given another refuses to
// start with them.
func TestWarmSandboxesNeedTheRunscRunner(t *testing.T) {
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{"warm-refused": 1}
	cfg.Worker.WarmSandboxes = 1
	runner, err := executor.NewRunscRunner(context.Background(), executor.RunscConfig{StateDir: env.state})
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close(context.Background())
	if _, err := worker.New(cfg, otherRunner{runner}, env.store, nil); err == nil || !strings.Contains(err.Error(), "warm sandboxes need the runsc runner") {
		t.Fatalf("NewWorker: %v", err)
	}
	if ids, _ := runner.Containers(context.Background()); len(ids) != 0 {
		t.Fatalf("containers %v", ids)
	}
}
