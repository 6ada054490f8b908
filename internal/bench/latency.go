package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/executortest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

// floors runs the job serially, one at a time, each way: as a bare
// process, in a bare runsc container (create/start/wait/delete, and one
// `runsc run`), and through sandq (to the result, and to the webhook). It
// also returns the serial runs' stages.
func (e *env) floors(ctx context.Context, v variant) ([]FloorRow, StageSet, error) {
	n := e.o.FloorRuns
	var rows []FloorRow
	var stages StageSet

	// The bare process, unless the host's interpreter cannot run it.
	var vals []float64
	if v.noProcess == "" {
		if _, err := e.runProcess(ctx, v); err != nil {
			return nil, stages, fmt.Errorf("%s: warm-up: %w", FloorProcess, err)
		}
		for range n {
			d, err := e.runProcess(ctx, v)
			if err != nil {
				return nil, stages, fmt.Errorf("%s: %w", FloorProcess, err)
			}
			vals = append(vals, ms(d))
		}
		rows = append(rows, FloorRow{Name: FloorProcess, What: "the interpreter on the host, script and input in a temporary directory", Dist: dist(vals)})
	}

	// Bare runsc containers.
	for _, f := range []struct {
		name, what string
		oneShot    bool
	}{
		{FloorBare, "bare runsc container, sandq's OCI spec and flags: runsc create, start, wait, delete", false},
		{FloorBareRun, "bare runsc container, sandq's OCI spec and flags: one runsc run", true},
	} {
		if _, err := e.runBare(ctx, v, f.oneShot); err != nil {
			return nil, stages, fmt.Errorf("%s: warm-up: %w", f.name, err)
		}
		var runs []*bareRun
		var counts Runs
		vals = nil
		for range n {
			r, err := e.runBare(ctx, v, f.oneShot)
			if err != nil {
				return nil, stages, fmt.Errorf("%s: %w", f.name, err)
			}
			runs = append(runs, r)
			vals = append(vals, ms(r.done.Sub(r.began)))
			if r.waitLost {
				counts.WaitLost++
			}
		}
		rows = append(rows, FloorRow{Name: f.name, What: f.what, Runs: counts, Dist: dist(vals)})
		if !f.oneShot {
			stages.Bare = bareStageRows(runs, nil)
		}
	}

	// sandq, cold, with warm sandboxes and restored from a template.
	for _, m := range e.modes(v) {
		runs, err := e.serialSandq(ctx, v, n, m)
		if err != nil {
			return nil, stages, fmt.Errorf("%s: %w", m.result, err)
		}
		var toResult, toHook []float64
		var counts Runs
		for _, r := range runs {
			toResult = append(toResult, ms(r.result.Sub(r.sent)))
			if !r.hook.IsZero() {
				toHook = append(toHook, ms(r.hook.Sub(r.sent)))
			}
			counts.count(r)
		}
		what := m.what
		if m.ahead() > 0 {
			what += " (each job sent when one is ready)"
		}
		rows = append(rows, FloorRow{Name: m.result, What: what + ", worker concurrency 1: Client.Enqueue until the completed result is seen", Runs: counts, Dist: dist(toResult)})
		if len(toHook) > 0 {
			rows = append(rows, FloorRow{Name: m.hook, What: what + ": Client.Enqueue until the signed webhook arrives", Runs: counts, Dist: dist(toHook)})
		}
		*stages.of(m.key) = sandqStageRows(runs)
	}
	return rows, stages, nil
}

// mode is one way the bench runs sandq: cold (every job makes its
// sandbox), with warm sandboxes, restored from a snapshot template on the
// job's path, or restored ahead of it (a pool of restored sandboxes).
type mode struct {
	key string
	// warm is the worker's warm sandboxes; snapshots turns its templates
	// on; pool is its pool of restored sandboxes.
	warm, pool         int
	snapshots          bool
	result, hook, what string
}

// Mode keys.
const (
	modeCold         = "cold"
	modeWarm         = "warm"
	modeRestored     = "restored"
	modeRestoredPool = "restored_pool"
)

// modes are the sandq modes the run measures for v: cold, warm (unless
// NoWarm), and for the python variants restored and restored with a pool
// (unless NoSnapshots).
func (e *env) modes(v variant) []mode {
	ms := []mode{{key: modeCold, result: FloorSandq, hook: FloorSandqHook, what: "sandq"}}
	if !e.o.NoWarm {
		ms = append(ms, mode{key: modeWarm, warm: e.o.Warm, result: FloorSandqWarm, hook: FloorSandqWarmHook,
			what: fmt.Sprintf("sandq with %d warm sandboxes", e.o.Warm)})
	}
	if e.snapshots(v) {
		ms = append(ms,
			mode{key: modeRestored, snapshots: true, result: FloorSandqRestored, hook: FloorSandqRestoredHook,
				what: "sandq with snapshot templates (each job restored from its image's template)"},
			mode{key: modeRestoredPool, snapshots: true, pool: e.o.Warm, result: FloorSandqRestoredPool, hook: FloorSandqRestoredPoolHook,
				what: fmt.Sprintf("sandq with snapshot templates and %d sandboxes restored ahead", e.o.Warm)})
	}
	return ms
}

// snapshots reports whether v is measured restored.
func (e *env) snapshots(v variant) bool { return !e.o.NoSnapshots && v.restorable() }

// ahead is how many sandboxes the mode's worker makes ahead of its jobs,
// warm or restored; serial jobs are sent once one is ready.
func (m mode) ahead() int { return m.warm + m.pool }

// suffix names the mode in a phase's name.
func (m mode) suffix() string {
	switch {
	case m.pool > 0:
		return fmt.Sprintf(", restored, pool of %d", m.pool)
	case m.snapshots:
		return ", restored"
	case m.warm > 0:
		return fmt.Sprintf(", %d warm", m.warm)
	}
	return ""
}

// bareStageRows are the stages of bare runs: waiting for a slot (from
// began until acquired; none when acquired is nil), set-up with create and
// start, the run (runsc wait), and delete with clean-up.
func bareStageRows(runs []*bareRun, acquired []time.Time) []StageRow {
	vals := make([][]float64, len(bareStageNames))
	for i, r := range runs {
		got := r.began
		if acquired != nil {
			got = acquired[i]
		}
		for j, d := range []time.Duration{got.Sub(r.began), r.created.Sub(got), r.exited.Sub(r.created), r.done.Sub(r.exited)} {
			vals[j] = append(vals[j], ms(d))
		}
	}
	rows := make([]StageRow, len(bareStageNames))
	for j, s := range bareStageNames {
		rows[j] = StageRow{Stage: s.name, What: s.what, Dist: dist(vals[j])}
	}
	return rows
}

var bareStageNames = []struct{ name, what string }{
	{"slot_wait", "waiting for one of the concurrency slots"},
	{"create_start", "job directories, bundle, runsc create and start"},
	{"wait", "runsc wait: the script's run"},
	{"delete", "runsc delete, directories removed"},
}

// sandqStageRows are the stages of the sandq runs that succeeded.
func sandqStageRows(runs []*sandqRun) []StageRow {
	vals := make([][]float64, len(sandqStageNames))
	for _, r := range runs {
		if !r.ok() {
			continue
		}
		for j, s := range r.stages() {
			vals[j] = append(vals[j], s)
		}
	}
	var rows []StageRow
	for j, s := range sandqStageNames {
		if len(vals[j]) > 0 {
			rows = append(rows, StageRow{Stage: s.name, What: s.what, Dist: dist(vals[j])})
		}
	}
	return rows
}

// count adds a sandq run to the counts.
func (c *Runs) count(r *sandqRun) {
	if !r.ok() {
		c.Failed++
	}
	if r.res.Timings != nil && r.res.Timings.WarmStart {
		c.Warm++
	}
	if r.res.Timings != nil && r.res.Timings.StartMode == jobs.StartRestored {
		c.Restored++
	}
	if r.res.Attempt > 1 {
		c.Retried++
	}
}

// schedule is the open-loop send schedule: n offsets from the start with
// exponential gaps of mean 1/rate, the same for a seed.
func schedule(n int, rate float64, seed int64) []time.Duration {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5a4d51))
	out := make([]time.Duration, n)
	var t float64
	for i := range out {
		t += rng.ExpFloat64() / rate
		out[i] = time.Duration(t * float64(time.Second))
	}
	return out
}

// sleepUntil sleeps until t, or until ctx ends.
func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// latency sends the same open-loop schedule to bare runsc containers (at
// most LatencyConcurrency at once; the rest wait for a slot) and through
// sandq (a worker of that concurrency), measuring each job from its
// scheduled send time.
func (e *env) latency(ctx context.Context, v variant) (LatencyReport, error) {
	o := e.o
	sched := schedule(o.LatencyJobs, o.Rate, o.Seed)
	rep := LatencyReport{Jobs: o.LatencyJobs, RatePerSecond: o.Rate, Concurrency: o.LatencyConcurrency, ScheduleSeconds: round1(sched[len(sched)-1].Seconds())}

	// Bare runsc.
	if _, err := e.runBare(ctx, v, false); err != nil {
		return rep, fmt.Errorf("bare warm-up: %w", err)
	}
	bare, acquired, err := e.openLoopBare(ctx, v, sched, time.Now().Add(100*time.Millisecond))
	if err != nil {
		return rep, err
	}
	bareLat, bareRuns := bareLatencies(bare)
	rep.BareStages = bareStageRows(bare, acquired)

	// sandq, each mode.
	bareDist := dist(bareLat)
	rep.Rows = []LatencyRow{{Name: LatencyBare, What: "bare runsc container (create, start, wait, delete), from the scheduled send", Succeeded: len(bareLat), Runs: bareRuns, Dist: bareDist}}
	if o.Explain {
		var held []float64
		for i, r := range bare {
			held = append(held, ms(r.done.Sub(acquired[i])))
		}
		hold := time.Duration(dist(held).P50 * float64(time.Millisecond))
		beside, err := measured(ctx, e, phaseName(v, "bare beside the control plane", mode{key: modeCold}), len(sched)+1, func() ([]*bareRun, error) {
			return e.bareBesideControlPlane(ctx, v, sched, hold)
		})
		if err != nil {
			return rep, err
		}
		lat, runs := bareLatencies(beside)
		d := dist(lat)
		rep.Rows = append(rep.Rows, LatencyRow{Name: LatencyBareBesideControlPlane, What: fmt.Sprintf("bare runsc again, while the same schedule runs through sandq's control plane without sandboxes (each job held %.0f ms, the bare median)", ms(hold)), Succeeded: len(lat), Runs: runs, Dist: d})
		ov := overhead(d, bareDist)
		rep.BesideControlPlaneMS, rep.ControlPlaneHoldMS = &ov, round1(ms(hold))
	}
	for _, m := range e.modes(v) {
		runs, err := measured(ctx, e, phaseName(v, "open loop", m), len(sched)+1, func() ([]*sandqRun, error) { return e.openLoopSandq(ctx, v, sched, m) })
		if err != nil {
			return rep, err
		}
		var sandqRuns Runs
		var toResult, toHook []float64
		for _, r := range runs {
			sandqRuns.count(r)
			toResult = append(toResult, ms(r.result.Sub(r.scheduled)))
			if !r.hook.IsZero() {
				toHook = append(toHook, ms(r.hook.Sub(r.scheduled)))
			}
		}
		resultDist := dist(toResult)
		rep.Rows = append(rep.Rows, LatencyRow{Name: m.result, What: m.what + ": scheduled send until the completed result is seen", Succeeded: len(toResult) - sandqRuns.Failed, Runs: sandqRuns, Dist: resultDist})
		ov := overhead(resultDist, bareDist)
		var hookOv *Overhead
		if len(toHook) > 0 {
			hookDist := dist(toHook)
			rep.Rows = append(rep.Rows, LatencyRow{Name: m.hook, What: m.what + ": scheduled send until the signed webhook arrives", Succeeded: len(toHook) - sandqRuns.Failed, Runs: sandqRuns, Dist: hookDist})
			o := overhead(hookDist, bareDist)
			hookOv = &o
		}
		stages := sandqStageRows(runs)
		switch m.key {
		case modeCold:
			rep.OverheadMS, rep.WebhookOverheadMS, rep.SandqStages = ov, hookOv, stages
		case modeWarm:
			rep.WarmOverheadMS, rep.WarmWebhookOverheadMS, rep.SandqWarmStages = &ov, hookOv, stages
		case modeRestored:
			rep.Restored = &ModeLatency{OverheadMS: ov, WebhookOverheadMS: hookOv, Stages: stages}
		case modeRestoredPool:
			rep.RestoredPool = &ModeLatency{OverheadMS: ov, WebhookOverheadMS: hookOv, Stages: stages}
		}
	}
	if e.hooks != nil {
		if n := e.hooks.badDeliveries(); n > 0 {
			return rep, fmt.Errorf("%d webhook deliveries failed verification", n)
		}
	}
	return rep, nil
}

// bareLatencies are the bare runs' latencies, from their scheduled times,
// and their counts.
func bareLatencies(bare []*bareRun) ([]float64, Runs) {
	var lat []float64
	var runs Runs
	for _, r := range bare {
		if r.waitLost {
			runs.WaitLost++
		}
		lat = append(lat, ms(r.done.Sub(r.began)))
	}
	return lat, runs
}

// openLoopBare runs the schedule from start in bare runsc containers, at
// the latency concurrency; each run's latency counts from its scheduled
// time, and acquired is when it got a slot.
func (e *env) openLoopBare(ctx context.Context, v variant, sched []time.Duration, start time.Time) (bare []*bareRun, acquired []time.Time, _ error) {
	bare = make([]*bareRun, len(sched))
	acquired = make([]time.Time, len(sched))
	errs := make([]error, len(sched))
	slots := make(chan struct{}, e.o.LatencyConcurrency)
	var wg sync.WaitGroup
	for i, off := range sched {
		wg.Go(func() {
			at := start.Add(off)
			if err := sleepUntil(ctx, at); err != nil {
				errs[i] = err
				return
			}
			slots <- struct{}{}
			defer func() { <-slots }()
			acquired[i] = time.Now()
			r, err := e.runBare(ctx, v, false)
			if err != nil {
				errs[i] = err
				return
			}
			r.began = at // latency counts from the scheduled time
			bare[i] = r
		})
	}
	wg.Wait()
	if err := errJobs(errs, len(sched)); err != nil {
		return nil, nil, fmt.Errorf("bare runsc: %w", err)
	}
	return bare, acquired, nil
}

// bareBesideControlPlane runs the schedule in bare runsc containers while
// sending it, at the same times, through a worker whose runner runs no
// sandbox and holds each job for hold (see Options.Explain); the
// control-plane jobs are followed to their results and webhooks as sandq's
// are, and must succeed.
func (e *env) bareBesideControlPlane(ctx context.Context, v variant, sched []time.Duration, hold time.Duration) ([]*bareRun, error) {
	queue := fmt.Sprintf("bench-beside-%s-%d", v.name, e.next())
	runner := &executortest.Runner{Dir: filepath.Join(e.dir, "no-sandbox", queue), Job: func(ctx context.Context, sb *executortest.Sandbox) executortest.Run {
		select {
		case <-ctx.Done():
			return executortest.Run{Err: ctx.Err()}
		case <-time.After(hold):
		}
		if err := os.WriteFile(filepath.Join(sb.OutputsDir(), outputName), []byte(v.want), 0o644); err != nil {
			return executortest.Run{Err: err}
		}
		zero := 0
		return executortest.Run{Outcome: executor.Outcome{ExitCode: &zero}}
	}}
	cfg := e.cfg
	cfg.Worker.Concurrency = e.o.LatencyConcurrency
	cfg.Worker.Queues = map[string]int{queue: 1}
	w, err := worker.New(cfg, runner, e.store, e.o.Logger)
	if err != nil {
		return nil, err
	}
	if err := w.Start(ctx); err != nil {
		w.Shutdown()
		return nil, err
	}
	defer w.Shutdown()
	if r, err := e.sendJob(ctx, v, queue, time.Time{}); err != nil {
		return nil, fmt.Errorf("control-plane warm-up: %w", err)
	} else if !r.ok() {
		return nil, fmt.Errorf("control-plane warm-up: %s", r.failure)
	}
	start := time.Now().Add(100 * time.Millisecond)
	errs := make([]error, len(sched))
	var wg sync.WaitGroup
	for i, off := range sched {
		wg.Go(func() {
			at := start.Add(off)
			if errs[i] = sleepUntil(ctx, at); errs[i] != nil {
				return
			}
			r, err := e.sendJob(ctx, v, queue, at)
			if err == nil && !r.ok() {
				err = errors.New(r.failure)
			}
			errs[i] = err
		})
	}
	bare, _, err := e.openLoopBare(ctx, v, sched, start)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if err := errJobs(errs, len(sched)); err != nil {
		return nil, fmt.Errorf("control plane beside the bare loop: %w", err)
	}
	return bare, nil
}

// openLoopSandq sends the schedule through a worker of the latency
// concurrency in mode m, after one warm-up job.
func (e *env) openLoopSandq(ctx context.Context, v variant, sched []time.Duration, m mode) ([]*sandqRun, error) {
	queue := fmt.Sprintf("bench-latency-%s-%d", v.name, e.next())
	w, err := e.startWorker(ctx, v, queue, e.o.LatencyConcurrency, m)
	if err != nil {
		return nil, err
	}
	defer w.Shutdown()
	if _, err := e.sendJob(ctx, v, queue, time.Time{}); err != nil {
		return nil, fmt.Errorf("sandq warm-up: %w", err)
	}
	// The schedule starts with the warm or restored sandboxes all ready,
	// as after any idle spell.
	if err := waitAhead(ctx, w, m, m.ahead()); err != nil {
		return nil, err
	}
	runs := make([]*sandqRun, len(sched))
	errs := make([]error, len(sched))
	start := time.Now().Add(100 * time.Millisecond)
	var wg sync.WaitGroup
	for i, off := range sched {
		wg.Go(func() {
			at := start.Add(off)
			if errs[i] = sleepUntil(ctx, at); errs[i] == nil {
				runs[i], errs[i] = e.sendJob(ctx, v, queue, at)
			}
		})
	}
	wg.Wait()
	if err := errJobs(errs, len(sched)); err != nil {
		return nil, fmt.Errorf("sandq: %w", err)
	}
	return runs, nil
}
