package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/testenv"
)

// TestControlPlaneBenchmark runs the control-plane bench for a few dozen
// jobs against its own real Redis and MinIO, with the webhook (push) and
// without (sweep, open loop), and checks that every figure of the table is
// there and sane: calls and bytes per job, S3 requests at least what each
// job must make. It never asserts on speed.
func TestControlPlaneBenchmark(t *testing.T) {
	testenv.Long(t, "starts Redis and MinIO and runs two short benches")
	testenv.NeedBinary(t, "redis-server", "minio")
	for _, c := range []struct {
		name string
		o    ControlPlaneOptions
	}{
		{"webhook, as fast as possible", ControlPlaneOptions{Workers: []int{1, 2}, Concurrency: []int{2}, Jobs: 30, Producers: 3}},
		{"sweep, open loop, two task check intervals", ControlPlaneOptions{Workers: []int{1}, Concurrency: []int{3}, Jobs: 20, Rate: 40, NoWebhook: true,
			TaskCheckIntervals: []time.Duration{20 * time.Millisecond, 200 * time.Millisecond}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := c.o
			o.InputBytes, o.OutputFiles, o.OutputBytes = 3000, 2, 2048
			o.IdleWindow = 500 * time.Millisecond
			o.TempDir = t.TempDir()
			var progress bytes.Buffer
			o.Progress = &progress
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			rep, err := RunControlPlane(ctx, o)
			t.Logf("progress:\n%s", progress.String())
			if err != nil {
				t.Fatalf("control-plane bench: %v", err)
			}
			var table bytes.Buffer
			if err := rep.PrintTable(&table); err != nil {
				t.Fatal(err)
			}
			t.Logf("table:\n%s", table.String())
			o = o.WithDefaults()
			checkCPReport(t, o, rep)
			for _, want := range []string{"jobs/s", "redis calls/job", "redis cpu ms/job", "s3 workers requests/job", "minio cpu ms/job", "evalsha", "workers GET"} {
				if !strings.Contains(table.String(), want) {
					t.Errorf("table lacks %q", want)
				}
			}
			// Nothing is left in the scratch directory.
			if left, _ := os.ReadDir(o.TempDir); len(left) != 0 {
				t.Errorf("left behind in the temporary directory: %v", left)
			}
			// The JSON reads back the same.
			path := filepath.Join(t.TempDir(), "cp.json")
			if err := rep.WriteJSON(path); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var back CPReport
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("report JSON does not parse: %v", err)
			}
			if len(back.Rows) != len(rep.Rows) || back.Rows[0].Redis.CallsPerJob != rep.Rows[0].Redis.CallsPerJob || back.Rows[0].S3Workers.ByMethod["PUT"] != rep.Rows[0].S3Workers.ByMethod["PUT"] {
				t.Errorf("report JSON does not read back the same")
			}
		})
	}
}

// checkCPReport checks a report's every row against what each job must
// cost at least.
func checkCPReport(t *testing.T, o ControlPlaneOptions, rep *CPReport) {
	t.Helper()
	if rep.FailedJobs != 0 {
		t.Errorf("%d jobs did not succeed: %q", rep.FailedJobs, rep.Failures)
	}
	if c := rep.Conditions; c.CPUs < 1 || c.Redis.AppendOnly != "yes" || c.Redis.Version == "" || c.Completion == "" || c.Asynq.TaskCheckInterval == "" {
		t.Errorf("conditions incomplete: %+v", c)
	}
	var shapes []string
	for _, row := range rep.Rows {
		shapes = append(shapes, fmt.Sprintf("%dx%d@%s", row.Workers, row.Concurrency, row.TaskCheckInterval))
	}
	var want []string
	for _, d := range o.TaskCheckIntervals {
		for _, n := range o.Workers {
			for _, c := range o.Concurrency {
				want = append(want, fmt.Sprintf("%dx%d@%s", n, c, d))
			}
		}
	}
	if !slices.Equal(shapes, want) {
		t.Fatalf("rows %v, want %v", shapes, want)
	}
	checkIdlePolling(t, rep.Rows)
	for i, row := range rep.Rows {
		what := "row " + shapes[i]
		if row.Jobs != o.Jobs || row.Succeeded != o.Jobs || row.Failed != 0 {
			t.Errorf("%s: %d sent, %d succeeded, %d failed; want all %d", what, row.Jobs, row.Succeeded, row.Failed, o.Jobs)
		}
		if !(row.JobsPerSecond > 0) || !(row.Seconds > 0) || !(row.SubmittedPerSecond > 0) || row.SubmitSeconds > row.Seconds {
			t.Errorf("%s: rates %+v", what, row)
		}
		checkDist(t, what+" latency", row.Latency, o.Jobs)
		if row.QueueWait.N != o.Jobs || row.InWorker.N != o.Jobs || row.InWorker.Max > row.Latency.Max {
			t.Errorf("%s: queue wait %+v, in worker %+v, latency %+v", what, row.QueueWait, row.InWorker, row.Latency)
		}
		r := row.Redis
		// Each job is at least enqueued, dequeued and completed: several
		// scripts and more commands.
		if r.CallsPerJob < 5 || r.ScriptCallsPerJob < 2 || r.ScriptCallsPerJob > r.CallsPerJob || !(r.CPUMsPerJob > 0) || !(r.CPUPercent > 0) ||
			!(r.CPUBoundJobsPerSecond > 0) || r.NetInBytesPerJob < 100 || r.NetOutBytesPerJob < 100 || len(r.Commands) == 0 {
			t.Errorf("%s: redis %+v", what, r)
		}
		if !slices.ContainsFunc(r.Commands, func(c CPCommand) bool { return c.Name == "evalsha" && c.CallsPerJob >= 2 }) {
			t.Errorf("%s: no evalsha in %+v", what, r.Commands)
		}
		if slices.ContainsFunc(r.Commands, func(c CPCommand) bool { return c.Name == "info" }) {
			t.Errorf("%s: the bench's own INFO counted", what)
		}
		// The producer uploads the script and the input; each worker
		// fetches both and uploads every output and both logs.
		p, w := row.S3Producer, row.S3Workers
		if p.ByMethod["PUT"] < 2 || p.SentBytesPerJob < float64(o.InputBytes+int64(len(cpScript))) {
			t.Errorf("%s: producer S3 %+v", what, p)
		}
		if w.ByMethod["PUT"] < float64(o.OutputFiles+2) || w.ByMethod["GET"] < 2 ||
			w.SentBytesPerJob < float64(int64(o.OutputFiles)*o.OutputBytes) || w.ReceivedBytesPerJob < float64(o.InputBytes) {
			t.Errorf("%s: worker S3 %+v, want PUT >= %d outputs and logs, GET >= 2", what, w, o.OutputFiles+2)
		}
		if w.RequestsPerJob < w.ByMethod["PUT"]+w.ByMethod["GET"] {
			t.Errorf("%s: worker S3 requests %v under its PUTs and GETs", what, w.RequestsPerJob)
		}
		if !(row.MinioCPUMsPerJob > 0) || !(row.BenchCPUMsPerJob > 0) {
			t.Errorf("%s: CPU: minio %v ms/job, bench %v ms/job", what, row.MinioCPUMsPerJob, row.BenchCPUMsPerJob)
		}
		if row.Idle == nil || !(row.Idle.CallsPerSecond > 0) || !(row.Idle.Seconds > 0) {
			t.Errorf("%s: idle %+v", what, row.Idle)
		}
	}
}

// checkIdlePolling checks that the task check interval reached the
// workers: of two rows of the same workers and concurrency, the one with
// the longer interval made Redis fewer calls a second while idle (a tenth
// of the polls against a fixed background, so far from a close call).
func checkIdlePolling(t *testing.T, rows []CPRow) {
	t.Helper()
	for _, a := range rows {
		for _, b := range rows {
			da, _ := time.ParseDuration(a.TaskCheckInterval)
			db, _ := time.ParseDuration(b.TaskCheckInterval)
			if a.Workers != b.Workers || a.Concurrency != b.Concurrency || da >= db || a.Idle == nil || b.Idle == nil {
				continue
			}
			if b.Idle.CallsPerSecond >= a.Idle.CallsPerSecond {
				t.Errorf("%dx%d idle: %g Redis calls/s at a task check interval of %s, not under the %g at %s",
					a.Workers, a.Concurrency, b.Idle.CallsPerSecond, b.TaskCheckInterval, a.Idle.CallsPerSecond, a.TaskCheckInterval)
			}
		}
	}
}

func TestControlPlaneOptionsRefusals(t *testing.T) {
	if err := (ControlPlaneOptions{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	for _, c := range []struct {
		name   string
		modify func(*ControlPlaneOptions)
		want   string
	}{
		{"workers", func(o *ControlPlaneOptions) { o.Workers = []int{0} }, "workers 0"},
		{"too many workers", func(o *ControlPlaneOptions) { o.Workers = []int{MaxCPWorkers + 1} }, "workers 65"},
		{"concurrency", func(o *ControlPlaneOptions) { o.Concurrency = []int{65} }, "concurrency 65"},
		{"task check interval", func(o *ControlPlaneOptions) { o.TaskCheckIntervals = []time.Duration{10 * time.Millisecond, 0} }, "task check interval 0s: must be between 1ms and 1m0s"},
		{"task check interval too long", func(o *ControlPlaneOptions) { o.TaskCheckIntervals = []time.Duration{2 * time.Minute} }, "task check interval 2m0s"},
		{"jobs", func(o *ControlPlaneOptions) { o.Jobs = -1 }, "jobs -1"},
		{"duration", func(o *ControlPlaneOptions) { o.Duration = -time.Second }, "duration -1s"},
		{"rate", func(o *ControlPlaneOptions) { o.Rate = 2000 }, "rate 2000"},
		{"rate sends nothing", func(o *ControlPlaneOptions) { o.Rate, o.Duration = 0.5, time.Second }, "sends no job"},
		{"producers", func(o *ControlPlaneOptions) { o.Producers = 300 }, "producers 300"},
		{"input bytes", func(o *ControlPlaneOptions) { o.InputBytes = -1 }, "input bytes -1"},
		{"output files", func(o *ControlPlaneOptions) { o.OutputFiles = 100000 }, "output files 100000"},
		{"output bytes", func(o *ControlPlaneOptions) { o.OutputBytes = 1 << 40 }, "output bytes"},
		{"idle window", func(o *ControlPlaneOptions) { o.IdleWindow = -time.Second }, "idle window"},
	} {
		o := ControlPlaneOptions{}.WithDefaults()
		c.modify(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	// A refused option starts nothing.
	dir := t.TempDir()
	if _, err := RunControlPlane(context.Background(), ControlPlaneOptions{Workers: []int{0}, TempDir: dir}); err == nil {
		t.Fatal("workers 0 accepted")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("a refused run left %v", left)
	}
}
