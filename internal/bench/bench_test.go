package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/testenv"
)

// TestQuickBenchmark runs the quick benchmark end to end against real
// services (its own Redis and MinIO, real runsc sandboxes on the image
// `make test` builds, a child `sandq worker`) and checks that the report is
// complete and sane. It never asserts on speed. A missing runsc, Redis,
// MinIO, image or root fails it (under -short, skips it).
func TestQuickBenchmark(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedBinary(t, "redis-server", "minio")
	img := testenv.NeedImage(t)
	bin := testenv.Sandq(t)
	var progress bytes.Buffer
	o := Quick(Options{SandqBinary: bin, ImageDir: img.Dir, Image: img.Name, Progress: &progress})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	rep, err := Run(ctx, o)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("benchmark: %v", err)
	}
	var table bytes.Buffer
	if err := rep.PrintTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("table:\n%s", table.String())
	o = o.WithDefaults()

	if rep.FailedJobs != 0 {
		t.Errorf("%d sandq jobs did not succeed: %q", rep.FailedJobs, rep.Failures)
	}
	checkConditions(t, rep.Conditions)
	if got := variantNames(rep); !slices.Equal(got, []string{VariantShell, VariantPython}) {
		t.Fatalf("variants %v, want shell and python", got)
	}
	for _, v := range rep.Variants {
		checkVariant(t, o, v)
	}
	if m := rep.Memory; m == nil {
		t.Error("no memory report")
	} else if m.IdleWorkerRSSKiB <= 0 || m.BusyWorkerRSSKiB <= 0 || m.RunningJobs != o.MemoryJobs || m.HelpersPerJobKiB < 0 || m.SandboxPerJobKiB <= 0 || m.Samples <= 0 {
		t.Errorf("memory report incomplete: %+v", *m)
	}
	if len(rep.Targets) != 4*len(o.Variants) {
		t.Errorf("%d targets, want 4 per variant: %+v", len(rep.Targets), rep.Targets)
	}
	for _, name := range []string{FloorProcess, FloorBare, FloorBareRun, FloorSandq, FloorSandqHook, FloorSandqWarm, FloorSandqWarmHook, "overhead sandq_result - bare_runsc",
		"overhead sandq_warm_result - bare_runsc", "sandq warm stages", "warm jobs/s", "queue_wait", "concurrency 2", "memory (child `sandq worker`)", "p99 overhead", "p50 overhead, warm sandboxes"} {
		if !strings.Contains(table.String(), name) {
			t.Errorf("table lacks %q", name)
		}
	}

	// The JSON is written and reads back the same.
	path := filepath.Join(t.TempDir(), "bench.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("report JSON does not parse: %v", err)
	}
	if len(back.Variants) != len(rep.Variants) || back.FailedJobs != rep.FailedJobs || back.Conditions.Runsc.ModuleVersion != rep.Conditions.Runsc.ModuleVersion ||
		back.Variants[0].Latency.OverheadMS != rep.Variants[0].Latency.OverheadMS || !back.StartedAt.Equal(rep.StartedAt) {
		t.Errorf("report JSON does not read back the same")
	}
	var generic map[string]any
	json.Unmarshal(b, &generic)
	for _, key := range []string{"conditions", "variants", "memory", "targets", "options", "failed_jobs"} {
		if _, ok := generic[key]; !ok {
			t.Errorf("report JSON lacks %q", key)
		}
	}
}

func variantNames(r *Report) []string {
	var out []string
	for _, v := range r.Variants {
		out = append(out, v.Variant)
	}
	return out
}

func checkConditions(t *testing.T, c Conditions) {
	t.Helper()
	switch {
	case c.CPUs < 1 || c.MemoryKiB <= 0 || c.Kernel == "" || c.LoadAvgStart == "" || c.LoadAvgEnd == "":
		t.Errorf("host conditions incomplete: %+v", c)
	case c.Runsc.Path == "" || c.Runsc.ModuleVersion == "" || c.Runsc.VersionOutput == "" || c.Runsc.GoVersion == "":
		t.Errorf("runsc conditions incomplete: %+v", c.Runsc)
	case !slices.Contains(c.Runsc.Flags, "--platform=systrap") || !slices.Contains(c.Runsc.Flags, "--network=none") || len(c.Runsc.Calls) != 4 || len(c.Runsc.SandqCalls) != 4:
		t.Errorf("runsc flags and calls: %+v", c.Runsc)
	case c.Redis.AppendOnly != "yes" || c.Redis.AppendFsync == "" || c.Redis.Version == "":
		t.Errorf("redis conditions: %+v", c.Redis)
	case c.Asynq.TaskCheckInterval == "" || c.Asynq.MaxRetry < 0 || !strings.HasPrefix(c.Completion, "push:") || c.JobLimits == "":
		t.Errorf("asynq conditions: %+v; completion %q", c.Asynq, c.Completion)
	}
	l := c.BenchLoad
	if !(l.WallSeconds > 0) || !(l.CPUSeconds > 0) || !(l.CPUPercent > 0) || l.RedisCommands <= 0 || !(l.RedisCommandsPerSecond > 0) {
		t.Errorf("bench load: %+v", l)
	}
	// Per variant: the serial floors and the open loop, cold and warm, and
	// a cold and a warm drain per concurrency.
	o := Quick(Options{}).WithDefaults()
	if want := len(o.Variants) * (4 + 2*len(o.Concurrency)); len(l.SandqPhases) != want {
		t.Errorf("%d sandq phases measured, want %d: %+v", len(l.SandqPhases), want, l.SandqPhases)
	}
	for _, p := range l.SandqPhases {
		checkPhase(t, p)
	}
}

// checkPhase checks a sandq phase's figures are there.
func checkPhase(t *testing.T, p PhaseLoad) {
	t.Helper()
	if p.Phase == "" || p.Jobs < 1 || !(p.Seconds > 0) || !(p.CPUMsPerJob > 0) || !(p.CPUPercent > 0) || !(p.RedisCommandsPerJob > 0) || !(p.RedisCommandsPerSecond > 0) {
		t.Errorf("sandq phase %+v: a figure is missing", p)
	}
}

// TestBenchLoad measures a phase of known Redis traffic against a real
// Redis: the meter counts at least its commands, and some CPU, in the
// phase and in the whole; the table prints them. It needs no root.
func TestBenchLoad(t *testing.T) {
	addr := testenv.Redis(t)
	ctx := context.Background()
	e := &env{}
	e.cfg.RedisAddr = addr
	t.Cleanup(func() { e.cleanup.Release(context.Background()) })
	if err := e.startLoad(ctx); err != nil {
		t.Fatal(err)
	}
	const jobs, pings = 10, 2000
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	n, err := measured(ctx, e, phaseName(variants[VariantShell], "serial", 2), jobs, func() (int, error) {
		for i := range pings {
			if err := rdb.Ping(ctx).Err(); err != nil {
				return i, err
			}
		}
		return pings, nil
	})
	if err != nil || n != pings {
		t.Fatalf("measured phase: %d %v", n, err)
	}
	// A failed phase is not recorded.
	boom := errors.New("boom")
	if _, err := measured(ctx, e, "failed", 1, func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatalf("failed phase: %v", err)
	}
	var c Conditions
	if err := e.finishLoad(ctx, &c); err != nil {
		t.Fatal(err)
	}
	l := c.BenchLoad
	if !(l.WallSeconds > 0) || !(l.CPUSeconds > 0) || l.RedisCommands < pings || !(l.RedisCommandsPerSecond > 0) {
		t.Errorf("bench load %+v, want some CPU and at least %d commands", l, pings)
	}
	if len(l.SandqPhases) != 1 {
		t.Fatalf("phases %+v, want the one that succeeded", l.SandqPhases)
	}
	p := l.SandqPhases[0]
	checkPhase(t, p)
	if p.Phase != "shell serial, 2 warm" || p.Jobs != jobs || p.RedisCommandsPerJob < pings/jobs {
		t.Errorf("phase %+v, want %q of %d jobs with at least %d commands each", p, "shell serial, 2 warm", jobs, pings/jobs)
	}
	var table bytes.Buffer
	if err := (&Report{Conditions: c}).PrintTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"commands/s", "% of one core", "sandq phases", "shell serial, 2 warm", "cpu ms/job"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func checkVariant(t *testing.T, o Options, v VariantReport) {
	t.Helper()
	name := v.Variant
	// Floors: every row, each run counted once.
	var floors []string
	for _, f := range v.Floors {
		floors = append(floors, f.Name)
		checkDist(t, name+" floor "+f.Name, f.Dist, o.FloorRuns)
		if f.Failed != 0 {
			t.Errorf("%s floor %s: %d failed", name, f.Name, f.Failed)
		}
		// Each warm floor job is sent once a warm sandbox is ready, so
		// each runs in one; no other job does.
		wantWarm := 0
		if f.Name == FloorSandqWarm || f.Name == FloorSandqWarmHook {
			wantWarm = o.FloorRuns
		}
		if f.Warm != wantWarm {
			t.Errorf("%s floor %s: %d jobs ran warm, want %d", name, f.Name, f.Warm, wantWarm)
		}
	}
	if want := []string{FloorProcess, FloorBare, FloorBareRun, FloorSandq, FloorSandqHook, FloorSandqWarm, FloorSandqWarmHook}; !slices.Equal(floors, want) {
		t.Errorf("%s floors %v, want %v", name, floors, want)
	}
	checkStages(t, name+" serial", v.FloorStages, o.FloorRuns)
	checkStages(t, name+" serial warm", StageSet{Sandq: v.FloorStages.SandqWarm, Bare: v.FloorStages.Bare}, o.FloorRuns)

	// Latency: every row, every job succeeded.
	l := v.Latency
	if l.Jobs != o.LatencyJobs || l.Concurrency != o.LatencyConcurrency || l.RatePerSecond != o.Rate || !(l.ScheduleSeconds > 0) {
		t.Errorf("%s latency settings: %+v", name, l)
	}
	var rows []string
	for _, r := range l.Rows {
		rows = append(rows, r.Name)
		checkDist(t, name+" latency "+r.Name, r.Dist, o.LatencyJobs)
		if r.Succeeded != o.LatencyJobs || r.Failed != 0 {
			t.Errorf("%s latency %s: %d succeeded, %d failed, want all %d", name, r.Name, r.Succeeded, r.Failed, o.LatencyJobs)
		}
		// Warm rows: some jobs may find the pool empty in a burst, but
		// the pool is full when the schedule starts.
		warmRow := r.Name == LatencySandqWarm || r.Name == LatencySandqWarmHook
		if (warmRow && r.Warm < 1) || (!warmRow && r.Warm != 0) {
			t.Errorf("%s latency %s: %d jobs ran warm", name, r.Name, r.Warm)
		}
	}
	if want := []string{LatencyBare, LatencySandq, LatencySandqHook, LatencySandqWarm, LatencySandqWarmHook}; !slices.Equal(rows, want) {
		t.Errorf("%s latency rows %v, want %v", name, rows, want)
	}
	if l.WebhookOverheadMS == nil || l.WarmOverheadMS == nil || l.WarmWebhookOverheadMS == nil {
		t.Errorf("%s: overheads missing: %+v", name, l)
	}
	checkStages(t, name+" open-loop warm", StageSet{Sandq: l.SandqWarmStages, Bare: l.BareStages}, o.LatencyJobs)
	for _, x := range []float64{l.OverheadMS.P50, l.OverheadMS.P90, l.OverheadMS.P99, l.OverheadMS.Max} {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			t.Errorf("%s overhead %+v", name, l.OverheadMS)
		}
	}
	checkStages(t, name+" open-loop", StageSet{Sandq: l.SandqStages, Bare: l.BareStages}, o.LatencyJobs)

	// Throughput: a row per concurrency, every job succeeded.
	var conc []int
	for _, r := range v.Throughput {
		conc = append(conc, r.Concurrency)
		if r.Jobs != o.ThroughputJobs || r.SandqSucceeded != o.ThroughputJobs || r.SandqFailed != 0 || r.BareSucceeded != o.ThroughputJobs {
			t.Errorf("%s throughput at %d: %+v, want all %d jobs succeeded", name, r.Concurrency, r, o.ThroughputJobs)
		}
		if !(r.SandqJobsPerSecond > 0) || !(r.BareJobsPerSecond > 0) || !(r.Ratio > 0) || !(r.SandqSeconds > 0) || !(r.BareSeconds > 0) {
			t.Errorf("%s throughput at %d: %+v", name, r.Concurrency, r)
		}
		if w := r.Warm; w == nil || w.Succeeded != o.ThroughputJobs || w.Failed != 0 || w.Started < 1 || !(w.JobsPerSecond > 0) || !(w.Ratio > 0) || !(w.Seconds > 0) {
			t.Errorf("%s warm throughput at %d: %+v, want all %d jobs succeeded, some warm", name, r.Concurrency, r.Warm, o.ThroughputJobs)
		}
	}
	if !slices.Equal(conc, o.Concurrency) {
		t.Errorf("%s throughput concurrencies %v, want %v", name, conc, o.Concurrency)
	}
}

// checkDist checks a distribution of n positive times is ordered.
func checkDist(t *testing.T, what string, d Dist, n int) {
	t.Helper()
	if d.N != n {
		t.Errorf("%s: %d values, want %d", what, d.N, n)
	}
	if !(d.Min > 0) || d.Min > d.P50 || d.P50 > d.P90 || d.P90 > d.P99 || d.P99 > d.Max || d.Mean < d.Min || d.Mean > d.Max {
		t.Errorf("%s: not ordered min <= p50 <= p90 <= p99 <= max, min <= mean <= max: %+v", what, d)
	}
}

// checkStages checks every stage is there, with a value per job that
// succeeded, ordered and not negative beyond the results' millisecond
// rounding. The webhook stage has no lower bound: it runs from when the
// bench saw the result, and the webhook may arrive before that.
func checkStages(t *testing.T, what string, s StageSet, n int) {
	t.Helper()
	var names []string
	for _, r := range s.Sandq {
		names = append(names, r.Stage)
		if r.N != n {
			t.Errorf("%s sandq stage %s: %d values, want %d", what, r.Stage, r.N, n)
		}
		if (r.Min < -5 && r.Stage != "webhook") || r.Min > r.P50 || r.P50 > r.P90 || r.P90 > r.P99 || r.P99 > r.Max {
			t.Errorf("%s sandq stage %s: %+v", what, r.Stage, r.Dist)
		}
	}
	var want []string
	for _, s := range sandqStageNames {
		want = append(want, s.name)
	}
	if !slices.Equal(names, want) {
		t.Errorf("%s sandq stages %v, want %v", what, names, want)
	}
	names = nil
	for _, r := range s.Bare {
		names = append(names, r.Stage)
		if r.N != n || r.Min < 0 || r.P50 > r.P90 || r.P99 > r.Max {
			t.Errorf("%s bare stage %s: %+v", what, r.Stage, r.Dist)
		}
	}
	want = nil
	for _, s := range bareStageNames {
		want = append(want, s.name)
	}
	if !slices.Equal(names, want) {
		t.Errorf("%s bare stages %v, want %v", what, names, want)
	}
}

func TestOptionsRefusals(t *testing.T) {
	good := Options{SandqBinary: "/bin/true"}
	if err := good.WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	for _, c := range []struct {
		name   string
		modify func(*Options)
		want   string
	}{
		{"variant", func(o *Options) { o.Variants = []string{"ruby"} }, `variant "ruby"`},
		{"floor runs", func(o *Options) { o.FloorRuns = -1 }, "floor runs"},
		{"latency jobs", func(o *Options) { o.LatencyJobs = -1 }, "latency jobs"},
		{"rate", func(o *Options) { o.Rate = 2000 }, "rate 2000"},
		{"latency concurrency", func(o *Options) { o.LatencyConcurrency = -1 }, "latency concurrency"},
		{"throughput jobs", func(o *Options) { o.ThroughputJobs = -1 }, "throughput jobs"},
		{"memory jobs", func(o *Options) { o.MemoryJobs = -1 }, "memory jobs"},
		{"warm", func(o *Options) { o.Warm = 65 }, "warm sandboxes 65"},
		{"negative warm", func(o *Options) { o.Warm = -1 }, "warm sandboxes -1"},
		{"binary", func(o *Options) { o.SandqBinary = "" }, "no sandq binary"},
		{"concurrency", func(o *Options) { o.Concurrency = []int{0} }, "concurrency 0"},
	} {
		o := good.WithDefaults()
		c.modify(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}

func TestScheduleIsOpenLoopAndRepeatable(t *testing.T) {
	a, b := schedule(2000, 4, 7), schedule(2000, 4, 7)
	if !slices.Equal(a, b) {
		t.Fatal("the same seed gave two schedules")
	}
	for i := 1; i < len(a); i++ {
		if a[i] < a[i-1] {
			t.Fatalf("offset %d goes back", i)
		}
	}
	// The mean gap is 1/rate, within sampling error (not a timing test:
	// nothing here runs).
	mean := a[len(a)-1].Seconds() / float64(len(a))
	if mean < 0.2 || mean > 0.3 {
		t.Errorf("mean gap %.3fs, want about 0.25s", mean)
	}
}

func TestDistPercentilesByNearestRank(t *testing.T) {
	var vals []float64
	for i := 100; i >= 1; i-- {
		vals = append(vals, float64(i))
	}
	d := dist(vals)
	if d.N != 100 || d.Min != 1 || d.P50 != 50 || d.P90 != 90 || d.P99 != 99 || d.Max != 100 || d.Mean != 50.5 {
		t.Errorf("dist: %+v", d)
	}
	if one := dist([]float64{7}); one.P50 != 7 || one.P99 != 7 || one.Max != 7 {
		t.Errorf("dist of one: %+v", one)
	}
	if vals[0] != 100 {
		t.Error("dist sorted its argument in place")
	}
}
