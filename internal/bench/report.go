package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is one run's measurements and the conditions they were taken in.
// Times are in milliseconds unless a field says otherwise.
type Report struct {
	StartedAt       time.Time       `json:"started_at"`
	FinishedAt      time.Time       `json:"finished_at"`
	DurationSeconds float64         `json:"duration_seconds"`
	Options         OptionsDoc      `json:"options"`
	Conditions      Conditions      `json:"conditions"`
	Variants        []VariantReport `json:"variants"`
	Memory          *MemoryReport   `json:"memory"`
	Targets         []Target        `json:"targets"`
	// FailedJobs counts sandq jobs (warm-ups included) that did not
	// succeed with the expected output; Failures are the first reasons.
	FailedJobs int      `json:"failed_jobs"`
	Failures   []string `json:"failures,omitempty"`
}

// OptionsDoc is what the run was asked to measure.
type OptionsDoc struct {
	Variants           []string `json:"variants"`
	FloorRuns          int      `json:"floor_runs"`
	LatencyJobs        int      `json:"latency_jobs"`
	RatePerSecond      float64  `json:"rate_per_second"`
	LatencyConcurrency int      `json:"latency_concurrency"`
	ThroughputJobs     int      `json:"throughput_jobs"`
	Concurrency        []int    `json:"concurrency"`
	Webhook            bool     `json:"webhook"`
	MemoryJobs         int      `json:"memory_jobs"`
	Seed               int64    `json:"seed"`
	Image              string   `json:"image"`
	// PandasImage is the python-pandas variant's image; Snapshots says
	// whether the python variants were measured restored.
	PandasImage string `json:"pandas_image"`
	Snapshots   bool   `json:"snapshots"`
}

func optionsDoc(o Options) OptionsDoc {
	return OptionsDoc{
		Variants: o.Variants, FloorRuns: o.FloorRuns, LatencyJobs: o.LatencyJobs, RatePerSecond: o.Rate,
		LatencyConcurrency: o.LatencyConcurrency, ThroughputJobs: o.ThroughputJobs, Concurrency: o.Concurrency,
		Webhook: !o.NoWebhook, MemoryJobs: o.MemoryJobs, Seed: o.Seed, Image: o.Image,
		PandasImage: o.PandasImage, Snapshots: !o.NoSnapshots,
	}
}

// Dist summarises a set of times, in milliseconds. Percentiles are by
// nearest rank, so P50 <= P90 <= P99 <= Max always holds.
type Dist struct {
	N    int     `json:"n"`
	Min  float64 `json:"min_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func dist(vals []float64) Dist {
	if len(vals) == 0 {
		return Dist{}
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	rank := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return Dist{
		N: len(s), Min: round1(s[0]), P50: round1(rank(0.5)), P90: round1(rank(0.9)), P99: round1(rank(0.99)),
		Max: round1(s[len(s)-1]), Mean: round1(sum / float64(len(s))),
	}
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// VariantReport is everything measured for one variant of the job.
type VariantReport struct {
	Variant string `json:"variant"`
	// Image is the image the variant ran on.
	Image string `json:"image"`
	// Template is the snapshot template its restored jobs started from;
	// nil without restored runs.
	Template *TemplateDoc `json:"template,omitempty"`
	// NoProcessFloor says why the variant has no bare_process floor.
	NoProcessFloor string     `json:"no_process_floor,omitempty"`
	Floors         []FloorRow `json:"floors"`
	// FloorStages break the serial sandq and bare runsc floors down.
	FloorStages StageSet        `json:"floor_stages"`
	Latency     LatencyReport   `json:"latency"`
	Throughput  []ThroughputRow `json:"throughput"`
	// Restore is the restored p50s over the cold ones; nil without
	// restored runs.
	Restore *RestoreRatios `json:"restore,omitempty"`
}

// TemplateDoc is a snapshot template the run's restored jobs started
// from, as the worker made or found it.
type TemplateDoc struct {
	Dir             string   `json:"dir"`
	Digest          string   `json:"digest"`
	Preload         []string `json:"preload"`
	CheckpointBytes int64    `json:"checkpoint_bytes"`
	// PreloadMS and CheckpointMS are the template's own build figures
	// (from when it was built, maybe by an earlier run); ReadySeconds is
	// how long the bench's first worker with snapshots took to be made,
	// building or only checking the template.
	PreloadMS    int64     `json:"preload_ms"`
	CheckpointMS int64     `json:"checkpoint_ms"`
	Created      time.Time `json:"created"`
	ReadySeconds float64   `json:"ready_seconds"`
}

// RestoreRatios are p50s of restored jobs over those of cold ones, in the
// same run: serial (the floors, Client.Enqueue until the result) and open
// loop (from the scheduled send), without and with a pool of restored
// sandboxes. Below 1 the restored jobs were faster.
type RestoreRatios struct {
	SerialP50       float64 `json:"serial_p50"`
	OpenLoopP50     float64 `json:"open_loop_p50"`
	PoolSerialP50   float64 `json:"pool_serial_p50"`
	PoolOpenLoopP50 float64 `json:"pool_open_loop_p50"`
}

// restoreRatios computes v's RestoreRatios from its rows; nil without
// restored rows.
func restoreRatios(v VariantReport) *RestoreRatios {
	p50 := func(rows []FloorRow, name string) float64 {
		for _, r := range rows {
			if r.Name == name {
				return r.P50
			}
		}
		return 0
	}
	var lat []FloorRow
	for _, r := range v.Latency.Rows {
		lat = append(lat, FloorRow{Name: r.Name, Dist: r.Dist})
	}
	ratio := func(a, b float64) float64 {
		if b <= 0 {
			return 0
		}
		return math.Round(a/b*1000) / 1000
	}
	if p50(v.Floors, FloorSandqRestored) == 0 {
		return nil
	}
	return &RestoreRatios{
		SerialP50:       ratio(p50(v.Floors, FloorSandqRestored), p50(v.Floors, FloorSandq)),
		OpenLoopP50:     ratio(p50(lat, LatencySandqRestored), p50(lat, LatencySandq)),
		PoolSerialP50:   ratio(p50(v.Floors, FloorSandqRestoredPool), p50(v.Floors, FloorSandq)),
		PoolOpenLoopP50: ratio(p50(lat, LatencySandqRestoredPool), p50(lat, LatencySandq)),
	}
}

// FloorRow is one way of running the job, serially, one at a time.
type FloorRow struct {
	Name string `json:"name"`
	What string `json:"what"`
	Runs
	Dist
}

// Runs count what went wrong: sandq jobs that did not succeed, sandq jobs
// whose result came from a later attempt (an earlier one failed for a
// system reason), and bare containers whose exit status runsc wait lost
// because the job had ended before wait reached the sandbox (the status
// then comes from the sandbox's boot log, as for sandq's sandboxes, which
// do the same without a trace in the result).
type Runs struct {
	// Failed counts sandq jobs that did not succeed (their times are in
	// the distribution, to their final result).
	Failed   int `json:"failed"`
	Retried  int `json:"retried"`
	WaitLost int `json:"wait_lost"`
	// Warm counts sandq jobs that ran in a warm sandbox
	// (timings.warm_start); Restored those restored from a snapshot
	// template (timings.start_mode "restored").
	Warm     int `json:"warm"`
	Restored int `json:"restored"`
}

// Floor row names.
const (
	FloorProcess   = "bare_process"
	FloorBare      = "bare_runsc"
	FloorBareRun   = "bare_runsc_run"
	FloorSandq     = "sandq_result"
	FloorSandqHook = "sandq_webhook"
	// The same with warm sandboxes (Options.Warm).
	FloorSandqWarm     = "sandq_warm_result"
	FloorSandqWarmHook = "sandq_warm_webhook"
	// The same restored from snapshot templates, and with a pool of
	// sandboxes restored ahead (Options.Warm of them).
	FloorSandqRestored         = "sandq_restored_result"
	FloorSandqRestoredHook     = "sandq_restored_webhook"
	FloorSandqRestoredPool     = "sandq_restored_pool_result"
	FloorSandqRestoredPoolHook = "sandq_restored_pool_webhook"
)

// LatencyReport is the open-loop run: each job's latency from its
// scheduled send time.
type LatencyReport struct {
	Jobs          int     `json:"jobs"`
	RatePerSecond float64 `json:"rate_per_second"`
	Concurrency   int     `json:"concurrency"`
	// ScheduleSeconds is the span of the send schedule (the same for every
	// row).
	ScheduleSeconds float64      `json:"schedule_seconds"`
	Rows            []LatencyRow `json:"rows"`
	// OverheadMS is sandq's latency to the result less the bare runsc
	// containers', percentile by percentile.
	OverheadMS Overhead `json:"overhead_ms"`
	// WebhookOverheadMS is the same for the webhook's arrival.
	WebhookOverheadMS *Overhead  `json:"webhook_overhead_ms,omitempty"`
	SandqStages       []StageRow `json:"sandq_stages"`
	BareStages        []StageRow `json:"bare_stages"`
	// The same with warm sandboxes; absent without the warm runs. Negative
	// overheads are below the floor.
	WarmOverheadMS        *Overhead  `json:"warm_overhead_ms,omitempty"`
	WarmWebhookOverheadMS *Overhead  `json:"warm_webhook_overhead_ms,omitempty"`
	SandqWarmStages       []StageRow `json:"sandq_warm_stages,omitempty"`
	// Restored and RestoredPool are the same restored from snapshot
	// templates, without and with a pool; absent without restored runs.
	Restored     *ModeLatency `json:"restored,omitempty"`
	RestoredPool *ModeLatency `json:"restored_pool,omitempty"`
	// BesideControlPlaneMS is the bare loop beside sandq's control plane
	// less the plain bare loop (Options.Explain), with the hold each
	// control-plane job had; absent without it.
	BesideControlPlaneMS *Overhead `json:"beside_control_plane_ms,omitempty"`
	ControlPlaneHoldMS   float64   `json:"control_plane_hold_ms,omitempty"`
}

// ModeLatency is one mode's open-loop overheads over the bare runsc
// containers' and its stages.
type ModeLatency struct {
	OverheadMS        Overhead   `json:"overhead_ms"`
	WebhookOverheadMS *Overhead  `json:"webhook_overhead_ms,omitempty"`
	Stages            []StageRow `json:"stages"`
}

// LatencyRow is one way of running the open-loop schedule.
type LatencyRow struct {
	Name      string `json:"name"`
	What      string `json:"what"`
	Succeeded int    `json:"succeeded"`
	Runs
	Dist
}

// Latency row names.
const (
	LatencyBare      = "bare_runsc"
	LatencySandq     = "sandq_result"
	LatencySandqHook = "sandq_webhook"
	// The same with warm sandboxes (Options.Warm).
	LatencySandqWarm     = "sandq_warm_result"
	LatencySandqWarmHook = "sandq_warm_webhook"
	// The same restored, and restored with a pool.
	LatencySandqRestored         = FloorSandqRestored
	LatencySandqRestoredHook     = FloorSandqRestoredHook
	LatencySandqRestoredPool     = FloorSandqRestoredPool
	LatencySandqRestoredPoolHook = FloorSandqRestoredPoolHook
	// LatencyBareBesideControlPlane is the bare loop again, beside sandq's
	// control plane running the same schedule without sandboxes
	// (Options.Explain).
	LatencyBareBesideControlPlane = "bare_runsc_beside_control_plane"
)

// Overhead is one distribution less another, percentile by percentile.
type Overhead struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func overhead(a, b Dist) Overhead {
	return Overhead{P50: round1(a.P50 - b.P50), P90: round1(a.P90 - b.P90), P99: round1(a.P99 - b.P99), Max: round1(a.Max - b.Max)}
}

// StageSet is the stages of sandq's jobs and of the bare containers.
type StageSet struct {
	Sandq             []StageRow `json:"sandq"`
	SandqWarm         []StageRow `json:"sandq_warm,omitempty"`
	SandqRestored     []StageRow `json:"sandq_restored,omitempty"`
	SandqRestoredPool []StageRow `json:"sandq_restored_pool,omitempty"`
	Bare              []StageRow `json:"bare"`
}

// of is the set's stages of sandq in mode key.
func (s *StageSet) of(key string) *[]StageRow {
	switch key {
	case modeWarm:
		return &s.SandqWarm
	case modeRestored:
		return &s.SandqRestored
	case modeRestoredPool:
		return &s.SandqRestoredPool
	}
	return &s.Sandq
}

// StageRow is one stage of the jobs' trips.
type StageRow struct {
	Stage string `json:"stage"`
	What  string `json:"what"`
	Dist
}

// ThroughputRow is one drain of pre-queued jobs at one concurrency.
type ThroughputRow struct {
	Concurrency    int `json:"concurrency"`
	Jobs           int `json:"jobs"`
	SandqSucceeded int `json:"sandq_succeeded"`
	SandqFailed    int `json:"sandq_failed"`
	BareSucceeded  int `json:"bare_succeeded"`
	// SandqRetried counts jobs whose result came from a later attempt;
	// BareWaitLost bare runs whose exit status runsc wait lost (see Runs).
	SandqRetried       int     `json:"sandq_retried"`
	BareWaitLost       int     `json:"bare_wait_lost"`
	SandqSeconds       float64 `json:"sandq_seconds"`
	BareSeconds        float64 `json:"bare_seconds"`
	SandqJobsPerSecond float64 `json:"sandq_jobs_per_second"`
	BareJobsPerSecond  float64 `json:"bare_jobs_per_second"`
	// Ratio is sandq's jobs/s over the bare loop's.
	Ratio float64 `json:"ratio"`
	// Warm is the same drain by a worker with warm sandboxes; nil without
	// the warm runs. Restored and RestoredPool are by a worker with
	// snapshot templates, without and with a pool of restored sandboxes;
	// nil without the restored runs.
	Warm         *WarmDrain `json:"warm,omitempty"`
	Restored     *WarmDrain `json:"restored,omitempty"`
	RestoredPool *WarmDrain `json:"restored_pool,omitempty"`
}

// WarmDrain is a drain by a worker with warm sandboxes, or with snapshot
// templates.
type WarmDrain struct {
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Retried   int `json:"retried"`
	// Started counts the jobs that ran in a warm sandbox, or for the
	// restored drains, that were restored from a template.
	Started       int     `json:"warm_started"`
	Seconds       float64 `json:"seconds"`
	JobsPerSecond float64 `json:"jobs_per_second"`
	// Ratio is jobs/s over the bare loop's.
	Ratio float64 `json:"ratio"`
}

// MemoryReport is a child `sandq worker`'s memory, idle and with jobs
// running, from /proc: the worker process's RSS, its runsc helper
// processes (runsc create/start/wait/delete calls, children of the
// worker) and, for scale, the sandboxes themselves (runsc sandbox and
// gofer processes).
type MemoryReport struct {
	IdleWorkerRSSKiB int64 `json:"idle_worker_rss_kib"`
	RunningJobs      int   `json:"running_jobs"`
	BusyWorkerRSSKiB int64 `json:"busy_worker_rss_kib"`
	// WorkerPerJobKiB is (busy − idle) / running jobs, of the worker
	// process alone.
	WorkerPerJobKiB int64 `json:"worker_per_job_kib"`
	// HelpersPerJobKiB is the RSS of the worker's runsc helper processes
	// per running job (none, since the worker stopped running `runsc
	// wait`: the figure shows that).
	HelpersPerJobKiB int64 `json:"helpers_per_job_kib"`
	// SandboxPerJobKiB is the RSS of each job's runsc sandbox and gofer.
	SandboxPerJobKiB int64 `json:"sandbox_per_job_kib"`
	Samples          int   `json:"samples"`
}

// Target is one of the targets, and how far this run is from it.
type Target struct {
	Variant  string  `json:"variant"`
	Name     string  `json:"name"`
	Target   string  `json:"target"`
	Measured float64 `json:"measured"`
	Unit     string  `json:"unit"`
	Met      bool    `json:"met"`
	// Distance is how far the measurement is from the target (positive:
	// short of it).
	Distance float64 `json:"distance"`
}

func targets(r *Report) []Target {
	var out []Target
	for _, v := range r.Variants {
		o := v.Latency.OverheadMS
		out = append(out,
			Target{Variant: v.Variant, Name: "p50 overhead", Target: "<= 30 ms", Measured: o.P50, Unit: "ms", Met: o.P50 <= 30, Distance: round1(o.P50 - 30)},
			Target{Variant: v.Variant, Name: "p99 overhead", Target: "<= 150 ms", Measured: o.P99, Unit: "ms", Met: o.P99 <= 150, Distance: round1(o.P99 - 150)},
		)
		if w := v.Latency.WarmOverheadMS; w != nil {
			out = append(out, Target{Variant: v.Variant, Name: "p50 overhead, warm sandboxes", Target: "< 0 ms (below bare runsc)", Measured: w.P50, Unit: "ms", Met: w.P50 < 0, Distance: w.P50})
		}
		var bestSandq, bestBare float64
		for _, t := range v.Throughput {
			bestSandq = max(bestSandq, t.SandqJobsPerSecond)
			bestBare = max(bestBare, t.BareJobsPerSecond)
		}
		if bestBare > 0 {
			ratio := math.Round(bestSandq/bestBare*1000) / 1000
			out = append(out, Target{Variant: v.Variant, Name: "best throughput vs bare runsc's best", Target: ">= 0.9", Measured: ratio, Unit: "ratio",
				Met: ratio >= 0.9, Distance: math.Round((0.9-ratio)*1000) / 1000})
		}
		out = append(out, snapshotTargets(v)...)
	}
	return out
}

// snapshotTargets are the snapshot targets that apply to v: its
// restored serial p50 over its cold one (at most 1/5 for python-pandas,
// no slower for python), and for python-pandas its best restored drain
// (with or without a pool) over its best cold one (at least 3x).
func snapshotTargets(v VariantReport) []Target {
	def, ok := variants[v.Variant]
	if !ok || v.Restore == nil {
		return nil
	}
	var out []Target
	if b := def.restoreTarget; b > 0 {
		r := v.Restore.SerialP50
		out = append(out, Target{Variant: v.Variant, Name: "restored p50 / cold p50, serial", Target: fmt.Sprintf("<= %g", b), Measured: r, Unit: "ratio",
			Met: r > 0 && r <= b, Distance: math.Round((r-b)*1000) / 1000})
	}
	if b := def.throughputTarget; b > 0 {
		var cold, restored float64
		for _, t := range v.Throughput {
			cold = max(cold, t.SandqJobsPerSecond)
			for _, d := range []*WarmDrain{t.Restored, t.RestoredPool} {
				if d != nil {
					restored = max(restored, d.JobsPerSecond)
				}
			}
		}
		if cold > 0 {
			r := math.Round(restored/cold*1000) / 1000
			out = append(out, Target{Variant: v.Variant, Name: "best restored throughput / best cold", Target: fmt.Sprintf(">= %g", b), Measured: r, Unit: "ratio",
				Met: r >= b, Distance: math.Round((b-r)*1000) / 1000})
		}
	}
	return out
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error { return writeJSON(path, r) }

// writeJSON writes a report to path, indented.
func writeJSON(path string, r any) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// PrintTable writes the report as text tables.
func (r *Report) PrintTable(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	c := r.Conditions
	fmt.Fprintf(out, "sandq bench, %s, %.0fs\n", r.StartedAt.Format(time.RFC3339), r.DurationSeconds)
	fmt.Fprintf(out, "host: %d CPUs (%s), %s memory, kernel %s, load %s at start, %s at end\n",
		c.CPUs, c.CPUModel, formatKiB(c.MemoryKiB), c.Kernel, c.LoadAvgStart, c.LoadAvgEnd)
	fmt.Fprintf(out, "runsc: %s (%s, built with %s); %q\n", c.Runsc.ModuleVersion, c.Runsc.Path, c.Runsc.GoVersion, c.Runsc.VersionOutput)
	fmt.Fprintf(out, "runsc flags: %s; bare calls: %s; sandq calls: %s\n", strings.Join(c.Runsc.Flags, " "), strings.Join(c.Runsc.Calls, ", "), strings.Join(c.Runsc.SandqCalls, ", "))
	fmt.Fprintf(out, "redis %s: appendonly=%s appendfsync=%s save=%q; asynq: task check interval %s, webhook concurrency %d, max retry %d\n",
		c.Redis.Version, c.Redis.AppendOnly, c.Redis.AppendFsync, c.Redis.Save, c.Asynq.TaskCheckInterval, c.Asynq.WebhookConcurrency, c.Asynq.MaxRetry)
	fmt.Fprintf(out, "job limits: %s; image %s\n", c.JobLimits, c.Image)
	fmt.Fprintf(out, "completion: %s\n", c.Completion)
	l := c.BenchLoad
	fmt.Fprintf(out, "bench process (with the in-process sandq workers; not runsc or the sandboxes): %.1fs CPU over %.1fs, %.1f%% of one core; redis %.1f commands/s (%d in all)\n",
		l.CPUSeconds, l.WallSeconds, l.CPUPercent, l.RedisCommandsPerSecond, l.RedisCommands)
	for _, v := range r.Variants {
		fmt.Fprintf(out, "\n== %s ==\n", v.Variant)
		if v.Image != "" {
			fmt.Fprintf(out, "image %s\n", v.Image)
		}
		if t := v.Template; t != nil {
			fmt.Fprintf(out, "snapshot template: %s (%s), preload %s; %s of checkpoint; preload %d ms, checkpoint %d ms when built %s; ready for the bench's first worker in %.1fs\n",
				t.Dir, t.Digest, strings.Join(t.Preload, ","), formatKiB(t.CheckpointBytes>>10), t.PreloadMS, t.CheckpointMS, t.Created.Format(time.RFC3339), t.ReadySeconds)
		}
		if v.NoProcessFloor != "" {
			fmt.Fprintf(out, "no %s floor: %s\n", FloorProcess, v.NoProcessFloor)
		}
		fmt.Fprintf(w, "floors, ms (serial, after 1 warm-up)\tn\tfailed\tretried\twait lost\twarm\trestored\tmin\tp50\tmean\tmax\t\n")
		for _, f := range v.Floors {
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t\n", f.Name, f.N, f.Failed, f.Retried, f.WaitLost, f.Warm, f.Restored, f.Min, f.P50, f.Mean, f.Max)
		}
		w.Flush()
		l := v.Latency
		fmt.Fprintf(out, "\n")
		fmt.Fprintf(w, "latency, ms (%d jobs, open loop %.3g/s, concurrency %d)\tok\tfailed\tretried\twait lost\twarm\trestored\tp50\tp90\tp99\tmax\tmean\t\n", l.Jobs, l.RatePerSecond, l.Concurrency)
		for _, row := range l.Rows {
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", row.Name, row.Succeeded, row.Failed, row.Retried, row.WaitLost, row.Warm, row.Restored, row.P50, row.P90, row.P99, row.Max, row.Mean)
		}
		overheads := []namedOverhead{{LatencySandq, &l.OverheadMS}, {LatencySandqHook, l.WebhookOverheadMS}, {LatencySandqWarm, l.WarmOverheadMS}, {LatencySandqWarmHook, l.WarmWebhookOverheadMS}}
		if m := l.Restored; m != nil {
			overheads = append(overheads, namedOverhead{LatencySandqRestored, &m.OverheadMS}, namedOverhead{LatencySandqRestoredHook, m.WebhookOverheadMS})
		}
		if m := l.RestoredPool; m != nil {
			overheads = append(overheads, namedOverhead{LatencySandqRestoredPool, &m.OverheadMS}, namedOverhead{LatencySandqRestoredPoolHook, m.WebhookOverheadMS})
		}
		overheads = append(overheads, namedOverhead{LatencyBareBesideControlPlane, l.BesideControlPlaneMS})
		for _, ov := range overheads {
			if o := ov.o; o != nil {
				fmt.Fprintf(w, "overhead %s - bare_runsc\t\t\t\t\t\t\t%.1f\t%.1f\t%.1f\t%.1f\t\t\n", ov.name, o.P50, o.P90, o.P99, o.Max)
			}
		}
		w.Flush()
		if x := v.Restore; x != nil {
			fmt.Fprintf(out, "restored p50 / cold p50: serial %.3f, open loop %.3f; with a pool of restored sandboxes: serial %.3f, open loop %.3f\n",
				x.SerialP50, x.OpenLoopP50, x.PoolSerialP50, x.PoolOpenLoopP50)
		}
		for _, st := range []struct {
			title         string
			serial, loose []StageRow
		}{{"sandq stages", v.FloorStages.Sandq, l.SandqStages}, {"sandq warm stages", v.FloorStages.SandqWarm, l.SandqWarmStages},
			{"sandq restored stages", v.FloorStages.SandqRestored, l.Restored.stages()}, {"sandq restored pool stages", v.FloorStages.SandqRestoredPool, l.RestoredPool.stages()},
			{"bare runsc stages", v.FloorStages.Bare, l.BareStages}} {
			if len(st.loose) == 0 {
				continue
			}
			fmt.Fprintf(out, "\n")
			fmt.Fprintf(w, "%s, ms\tserial p50\tserial mean\topen-loop p50\tp90\tp99\tmax\tmean\t\n", st.title)
			for _, s := range st.loose {
				var ser Dist
				for _, x := range st.serial {
					if x.Stage == s.Stage {
						ser = x.Dist
					}
				}
				fmt.Fprintf(w, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", s.Stage, ser.P50, ser.Mean, s.P50, s.P90, s.P99, s.Max, s.Mean)
			}
			w.Flush()
		}
		fmt.Fprintf(out, "\n")
		fmt.Fprintf(w, "throughput\tjobs\tsandq jobs/s\tbare jobs/s\tratio\tsandq s\tbare s\tsandq failed\tsandq retried\tbare wait lost\twarm jobs/s\twarm ratio\twarm started\t")
		restored := v.Restore != nil
		if restored {
			fmt.Fprintf(w, "restored jobs/s\trestored ratio\trestored started\tpool jobs/s\tpool ratio\tpool restored\t")
		}
		fmt.Fprintf(w, "\n")
		drain := func(d *WarmDrain) string {
			if d == nil {
				return "-\t-\t-"
			}
			return fmt.Sprintf("%.2f\t%.2f\t%d", d.JobsPerSecond, d.Ratio, d.Started)
		}
		for _, t := range v.Throughput {
			fmt.Fprintf(w, "concurrency %d\t%d\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%d\t%d\t%d\t%s\t", t.Concurrency, t.Jobs, t.SandqJobsPerSecond, t.BareJobsPerSecond, t.Ratio, t.SandqSeconds, t.BareSeconds, t.SandqFailed, t.SandqRetried, t.BareWaitLost, drain(t.Warm))
			if restored {
				fmt.Fprintf(w, "%s\t%s\t", drain(t.Restored), drain(t.RestoredPool))
			}
			fmt.Fprintf(w, "\n")
		}
		w.Flush()
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(out, "\nmemory (child `sandq worker`): idle %s RSS; with %d jobs running %s, i.e. %s per job in the worker process, %s per job in its runsc helper processes (the sandbox itself: %s per job)\n",
			formatKiB(m.IdleWorkerRSSKiB), m.RunningJobs, formatKiB(m.BusyWorkerRSSKiB), formatKiB(m.WorkerPerJobKiB), formatKiB(m.HelpersPerJobKiB), formatKiB(m.SandboxPerJobKiB))
	}
	if phases := c.BenchLoad.SandqPhases; len(phases) > 0 {
		fmt.Fprintf(out, "\n")
		fmt.Fprintf(w, "sandq phases: bench process and redis\tjobs\ts\tcpu ms/job\tcpu %% of a core\tredis cmds/job\tredis cmds/s\t\n")
		for _, p := range phases {
			fmt.Fprintf(w, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n", p.Phase, p.Jobs, p.Seconds, p.CPUMsPerJob, p.CPUPercent, p.RedisCommandsPerJob, p.RedisCommandsPerSecond)
		}
		w.Flush()
	}
	fmt.Fprintf(out, "\n")
	fmt.Fprintf(w, "targets\tvariant\ttarget\tmeasured\tmet\t\n")
	for _, t := range r.Targets {
		met := "no"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%g %s\t%s\t\n", t.Name, t.Variant, t.Target, t.Measured, t.Unit, met)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if r.FailedJobs > 0 {
		fmt.Fprintf(out, "\n%d sandq jobs did not succeed; first reasons:\n", r.FailedJobs)
		for _, f := range r.Failures {
			fmt.Fprintf(out, "  %s\n", f)
		}
	}
	return nil
}

// namedOverhead is an overhead row of the latency table.
type namedOverhead struct {
	name string
	o    *Overhead
}

// stages are the mode's open-loop stages; none for a nil mode.
func (m *ModeLatency) stages() []StageRow {
	if m == nil {
		return nil
	}
	return m.Stages
}

func formatKiB(k int64) string {
	switch {
	case k >= 1<<20:
		return fmt.Sprintf("%.1fGiB", float64(k)/(1<<20))
	case k >= 1<<10:
		return fmt.Sprintf("%.1fMiB", float64(k)/(1<<10))
	default:
		return fmt.Sprintf("%dKiB", k)
	}
}
