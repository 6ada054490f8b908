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
// MinIO, image or root fails it (under -short, skips it). The restored
// runs are left to TestPandasBenchmark, to keep this one short.
// runBench runs the bench with o, logs its progress and table, and checks
// that every sandq job succeeded and the conditions are complete.
func runBench(t *testing.T, o Options, progress *bytes.Buffer, timeout time.Duration) (*Report, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
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
	if rep.FailedJobs != 0 {
		t.Errorf("%d sandq jobs did not succeed: %q", rep.FailedJobs, rep.Failures)
	}
	checkConditions(t, o.WithDefaults(), rep.Conditions)
	return rep, table.String()
}

func TestQuickBenchmark(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedBinary(t, "redis-server", "minio")
	img := testenv.NeedImage(t)
	bin := testenv.Sandq(t)
	var progress bytes.Buffer
	o := Quick(Options{SandqBinary: bin, ImageDir: img.Dir, Image: img.Name, NoSnapshots: true, Explain: true, Progress: &progress})
	rep, table := runBench(t, o, &progress, 15*time.Minute)
	o = o.WithDefaults()
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
		"overhead sandq_warm_result - bare_runsc", "sandq warm stages", "warm jobs/s", "queue_wait", "concurrency 2", "memory (child `sandq worker`)", "p99 overhead", "p50 overhead, warm sandboxes", "overhead bare_runsc_beside_control_plane - bare_runsc"} {
		if !strings.Contains(table, name) {
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

func checkConditions(t *testing.T, o Options, c Conditions) {
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
	// Per variant and mode (cold, warm, and for python restored without
	// and with a pool): the serial floor, the open loop and a drain per
	// concurrency; and with Explain, the bare loop beside the control
	// plane.
	e := &env{o: o}
	want := 0
	for _, name := range o.Variants {
		want += len(e.modes(variants[name])) * (2 + len(o.Concurrency))
		if o.Explain {
			want++
		}
	}
	if len(l.SandqPhases) != want {
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
	n, err := measured(ctx, e, phaseName(variants[VariantShell], "serial", mode{key: modeWarm, warm: 2}), jobs, func() (int, error) {
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
	def := variants[name]
	modes := (&env{o: o}).modes(def)
	// starts are how many of n jobs of a row of mode m ran warm and were
	// restored. Each warm floor job is sent once a warm sandbox is ready,
	// so each runs in one; a restored mode restores every job, from its
	// pool or on its path.
	starts := func(m mode, n int) (warm, restored int) {
		switch m.key {
		case modeWarm:
			return n, 0
		case modeRestored, modeRestoredPool:
			return 0, n
		}
		return 0, 0
	}

	// Floors: every row, each run counted once.
	var floors []string
	for _, f := range v.Floors {
		floors = append(floors, f.Name)
		checkDist(t, name+" floor "+f.Name, f.Dist, o.FloorRuns)
		if f.Failed != 0 {
			t.Errorf("%s floor %s: %d failed", name, f.Name, f.Failed)
		}
		wantWarm, wantRestored := 0, 0
		for _, m := range modes {
			if f.Name == m.result || f.Name == m.hook {
				wantWarm, wantRestored = starts(m, o.FloorRuns)
			}
		}
		if f.Warm != wantWarm || f.Restored != wantRestored {
			t.Errorf("%s floor %s: %d jobs ran warm and %d restored, want %d and %d", name, f.Name, f.Warm, f.Restored, wantWarm, wantRestored)
		}
	}
	want := []string{FloorBare, FloorBareRun}
	if def.noProcess == "" {
		want = append([]string{FloorProcess}, want...)
	}
	for _, m := range modes {
		want = append(want, m.result, m.hook)
	}
	if !slices.Equal(floors, want) {
		t.Errorf("%s floors %v, want %v", name, floors, want)
	}
	if (v.NoProcessFloor == "") != (def.noProcess == "") {
		t.Errorf("%s: no_process_floor %q", name, v.NoProcessFloor)
	}
	for _, m := range modes {
		checkStages(t, name+" serial "+m.key, StageSet{Sandq: *v.FloorStages.of(m.key), Bare: v.FloorStages.Bare}, o.FloorRuns)
	}

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
		// the pool is full when the schedule starts. Restored rows: every
		// job is restored.
		warm, restored := 0, 0
		for _, m := range modes {
			if r.Name == m.result || r.Name == m.hook {
				warm, restored = starts(m, o.LatencyJobs)
			}
		}
		if (warm > 0 && r.Warm < 1) || (warm == 0 && r.Warm != 0) || r.Restored != restored {
			t.Errorf("%s latency %s: %d jobs ran warm and %d restored, want %d (some if over 0) and %d", name, r.Name, r.Warm, r.Restored, warm, restored)
		}
	}
	want = []string{LatencyBare}
	if o.Explain {
		want = append(want, LatencyBareBesideControlPlane)
		if l.BesideControlPlaneMS == nil || l.ControlPlaneHoldMS <= 0 {
			t.Errorf("%s: --explain without its overhead (%v) or hold (%v)", name, l.BesideControlPlaneMS, l.ControlPlaneHoldMS)
		}
	}
	for _, m := range modes {
		want = append(want, m.result, m.hook)
	}
	if !slices.Equal(rows, want) {
		t.Errorf("%s latency rows %v, want %v", name, rows, want)
	}
	if l.WebhookOverheadMS == nil || (!o.NoWarm && (l.WarmOverheadMS == nil || l.WarmWebhookOverheadMS == nil)) {
		t.Errorf("%s: overheads missing: %+v", name, l)
	}
	for _, x := range []float64{l.OverheadMS.P50, l.OverheadMS.P90, l.OverheadMS.P99, l.OverheadMS.Max} {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			t.Errorf("%s overhead %+v", name, l.OverheadMS)
		}
	}
	checkStages(t, name+" open-loop", StageSet{Sandq: l.SandqStages, Bare: l.BareStages}, o.LatencyJobs)
	if !o.NoWarm {
		checkStages(t, name+" open-loop warm", StageSet{Sandq: l.SandqWarmStages, Bare: l.BareStages}, o.LatencyJobs)
	}
	restoredRuns := len(modes) > 2
	for _, m := range []*ModeLatency{l.Restored, l.RestoredPool} {
		if (m != nil) != restoredRuns {
			t.Errorf("%s: restored open-loop rows %+v, want them only with restored runs (%v)", name, m, restoredRuns)
			continue
		}
		if m != nil {
			if m.WebhookOverheadMS == nil {
				t.Errorf("%s: restored webhook overhead missing", name)
			}
			checkStages(t, name+" open-loop restored", StageSet{Sandq: m.Stages, Bare: l.BareStages}, o.LatencyJobs)
		}
	}

	// Throughput: a row per concurrency, every job succeeded; the restored
	// drains restored every job.
	var conc []int
	for _, r := range v.Throughput {
		conc = append(conc, r.Concurrency)
		if r.Jobs != o.ThroughputJobs || r.SandqSucceeded != o.ThroughputJobs || r.SandqFailed != 0 || r.BareSucceeded != o.ThroughputJobs {
			t.Errorf("%s throughput at %d: %+v, want all %d jobs succeeded", name, r.Concurrency, r, o.ThroughputJobs)
		}
		if !(r.SandqJobsPerSecond > 0) || !(r.BareJobsPerSecond > 0) || !(r.Ratio > 0) || !(r.SandqSeconds > 0) || !(r.BareSeconds > 0) {
			t.Errorf("%s throughput at %d: %+v", name, r.Concurrency, r)
		}
		if w := r.Warm; !o.NoWarm && (w == nil || w.Succeeded != o.ThroughputJobs || w.Failed != 0 || w.Started < 1 || !(w.JobsPerSecond > 0) || !(w.Ratio > 0) || !(w.Seconds > 0)) {
			t.Errorf("%s warm throughput at %d: %+v, want all %d jobs succeeded, some warm", name, r.Concurrency, r.Warm, o.ThroughputJobs)
		}
		for _, d := range []*WarmDrain{r.Restored, r.RestoredPool} {
			if (d != nil) != restoredRuns {
				t.Errorf("%s restored throughput at %d: %+v, want one only with restored runs (%v)", name, r.Concurrency, d, restoredRuns)
				continue
			}
			if d != nil && (d.Succeeded != o.ThroughputJobs || d.Failed != 0 || d.Started != o.ThroughputJobs || !(d.JobsPerSecond > 0) || !(d.Ratio > 0) || !(d.Seconds > 0)) {
				t.Errorf("%s restored throughput at %d: %+v, want all %d jobs succeeded, all restored", name, r.Concurrency, *d, o.ThroughputJobs)
			}
		}
	}
	if !slices.Equal(conc, o.Concurrency) {
		t.Errorf("%s throughput concurrencies %v, want %v", name, conc, o.Concurrency)
	}

	// The restored runs' template and ratios.
	if restoredRuns {
		if tm := v.Template; tm == nil || tm.Dir == "" || !strings.HasPrefix(tm.Digest, "sha256:") || len(tm.Preload) == 0 || tm.CheckpointBytes <= 0 {
			t.Errorf("%s: template %+v", name, v.Template)
		}
		if x := v.Restore; x == nil || !(x.SerialP50 > 0) || !(x.OpenLoopP50 > 0) || !(x.PoolSerialP50 > 0) || !(x.PoolOpenLoopP50 > 0) {
			t.Errorf("%s: restore ratios %+v", name, v.Restore)
		}
	} else if v.Template != nil || v.Restore != nil {
		t.Errorf("%s: template %+v and ratios %+v without restored runs", name, v.Template, v.Restore)
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

// TestPandasBenchmark runs a tiny benchmark of the python and
// python-pandas variants, cold, warm and restored from snapshot templates
// (without and with a pool), against real services and sandboxes, and
// checks that every row is filled and that the restored rows count
// restored starts (timings.start_mode) and the others none. The
// python-pandas variant runs on the analysis image beside the test image;
// a missing one fails the test. It never asserts on speed: the snapshot
// targets are computed and printed, met or not.
func TestPandasBenchmark(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedBinary(t, "redis-server", "minio")
	img := testenv.NeedImage(t)
	bin := testenv.Sandq(t)
	var progress bytes.Buffer
	o := Options{
		Variants: []string{VariantPython, VariantPythonPandas}, FloorRuns: 2, LatencyJobs: 4, Rate: 1, ThroughputJobs: 4, Concurrency: []int{2},
		MemoryJobs: 1, SandqBinary: bin, ImageDir: img.Dir, Image: img.Name, Progress: &progress,
	}
	rep, table := runBench(t, o, &progress, 20*time.Minute)
	o = o.WithDefaults()
	if got := variantNames(rep); !slices.Equal(got, o.Variants) {
		t.Fatalf("variants %v, want %v", got, o.Variants)
	}
	for _, v := range rep.Variants {
		checkVariant(t, o, v)
	}
	if py, pd := rep.Variants[0], rep.Variants[1]; py.Image != img.Name || pd.Image != DefaultPandasImage {
		t.Errorf("images %q and %q, want %q and %q", py.Image, pd.Image, img.Name, DefaultPandasImage)
	}
	if !rep.Options.Snapshots || rep.Options.PandasImage != DefaultPandasImage {
		t.Errorf("options %+v", rep.Options)
	}
	// The four targets of every variant, and the snapshot ones: restored
	// against cold for both, throughput for python-pandas.
	var names []string
	for _, tg := range rep.Targets {
		names = append(names, tg.Variant+": "+tg.Name)
		if !(tg.Measured > 0) && tg.Unit == "ratio" {
			t.Errorf("target %+v: no measurement", tg)
		}
	}
	for _, want := range []string{VariantPython + ": restored p50 / cold p50, serial", VariantPythonPandas + ": restored p50 / cold p50, serial", VariantPythonPandas + ": best restored throughput / best cold"} {
		if !slices.Contains(names, want) {
			t.Errorf("targets lack %q: %v", want, names)
		}
	}
	if len(rep.Targets) != 4*2+3 {
		t.Errorf("%d targets, want 11: %v", len(rep.Targets), names)
	}
	for _, want := range []string{FloorSandqRestored, FloorSandqRestoredPoolHook, "restored p50 / cold p50: serial", "sandq restored pool stages", "restored jobs/s", "pool restored",
		"snapshot template: ", "no bare_process floor: ", "best restored throughput / best cold"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

// TestPandasVariantNeedsItsImage: a run with the python-pandas variant is
// refused, before anything is started, when its image is missing, with an
// error that names the variant, the image and how to build it; without
// the variant the same image directory is fine. It needs no root.
func TestPandasVariantNeedsItsImage(t *testing.T) {
	dir := t.TempDir()
	fakeImage := func(name string) {
		for _, p := range []string{"bin", "tmp"} {
			if err := os.MkdirAll(filepath.Join(dir, name, "rootfs", p), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, name, "rootfs", "tmp", ".keep"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fakeImage("default")
	o := Options{SandqBinary: "/bin/true", ImageDir: dir, Variants: []string{VariantShell, VariantPythonPandas}}.WithDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	err := checkImages(o)
	for _, want := range []string{"python-pandas", `image "analysis"`, "sandq image build analysis --packages-file images/analysis.packages", dir} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("without the analysis image: %v, want an error with %q", err, want)
		}
	}
	o.Variants = []string{VariantShell, VariantPython}
	if err := checkImages(o); err != nil {
		t.Errorf("without python-pandas: %v", err)
	}
	o.Variants = []string{VariantPythonPandas}
	fakeImage("analysis")
	if err := checkImages(o); err != nil {
		t.Errorf("with the analysis image: %v", err)
	}
}

// TestSnapshotTargets computes the snapshot targets of hand-made rows:
// each is met or not by its bound, python-pandas has the throughput one,
// shell and a run without restored rows have none.
func TestSnapshotTargets(t *testing.T) {
	floors := func(cold, restored float64) []FloorRow {
		return []FloorRow{{Name: FloorSandq, Dist: Dist{P50: cold}}, {Name: FloorSandqRestored, Dist: Dist{P50: restored}}, {Name: FloorSandqRestoredPool, Dist: Dist{P50: restored / 2}}}
	}
	drains := func(cold, restored, pool float64) []ThroughputRow {
		return []ThroughputRow{
			{Concurrency: 1, SandqJobsPerSecond: cold / 2, Restored: &WarmDrain{JobsPerSecond: restored / 2}, RestoredPool: &WarmDrain{JobsPerSecond: pool / 2}},
			{Concurrency: 2, SandqJobsPerSecond: cold, Restored: &WarmDrain{JobsPerSecond: restored}, RestoredPool: &WarmDrain{JobsPerSecond: pool}},
		}
	}
	for _, c := range []struct {
		name    string
		v       VariantReport
		want    []string
		wantMet []bool
	}{
		{"pandas met", VariantReport{Variant: VariantPythonPandas, Floors: floors(3000, 500), Throughput: drains(0.5, 1.4, 1.6)},
			[]string{"restored p50 / cold p50, serial", "best restored throughput / best cold"}, []bool{true, true}},
		{"pandas short", VariantReport{Variant: VariantPythonPandas, Floors: floors(3000, 700), Throughput: drains(0.5, 1.4, 1.2)},
			[]string{"restored p50 / cold p50, serial", "best restored throughput / best cold"}, []bool{false, false}},
		{"python no slower", VariantReport{Variant: VariantPython, Floors: floors(500, 500), Throughput: drains(2, 2, 2)},
			[]string{"restored p50 / cold p50, serial"}, []bool{true}},
		{"python slower", VariantReport{Variant: VariantPython, Floors: floors(500, 501), Throughput: drains(2, 2, 2)},
			[]string{"restored p50 / cold p50, serial"}, []bool{false}},
		{"shell", VariantReport{Variant: VariantShell, Floors: floors(500, 400)}, nil, nil},
		{"no restored rows", VariantReport{Variant: VariantPythonPandas, Floors: []FloorRow{{Name: FloorSandq, Dist: Dist{P50: 3000}}}}, nil, nil},
	} {
		c.v.Restore = restoreRatios(c.v)
		got := snapshotTargets(c.v)
		var names []string
		var met []bool
		for _, tg := range got {
			names, met = append(names, tg.Name), append(met, tg.Met)
		}
		if !slices.Equal(names, c.want) || !slices.Equal(met, c.wantMet) {
			t.Errorf("%s: targets %+v, want %v met %v", c.name, got, c.want, c.wantMet)
		}
	}
}
