// Package bench measures sandq against the floor it stands on: the same
// trivial job run as a bare process, as a bare one-shot runsc container
// made exactly as a sandbox's container is (internal/barerunsc), and end
// to end through sandq (enqueue, queue, worker, sandbox, uploads, result,
// webhook). It measures serial floors, open-loop latency, drain throughput
// and a worker's memory, all in one run on one machine, against a Redis and
// MinIO of its own (devstack) and a worker of its own, so it never touches
// a running `sandq dev`. `sandq bench` runs it.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// Variants of the trivial job.
const (
	VariantShell  = "shell"
	VariantPython = "python"
	// VariantPythonPandas is the python job that also imports pandas and
	// matplotlib, as most analysis jobs begin; it runs on
	// Options.PandasImage.
	VariantPythonPandas = "python-pandas"
)

// Options say what to measure. Zero fields take the defaults of
// WithDefaults; Quick gives a small run for tests.
type Options struct {
	// Variants of the trivial job: "shell", "python", "python-pandas".
	// Default shell and python.
	Variants []string
	// FloorRuns is how many times each floor runs serially (after one
	// warm-up run). Default 10.
	FloorRuns int
	// LatencyJobs are sent open-loop at Rate jobs per second on average,
	// with exponential gaps. Defaults 200 and 2.
	LatencyJobs int
	Rate        float64
	// LatencyConcurrency is the worker's concurrency in the latency runs,
	// and the bare runsc loop's. Default: number of CPUs (the worker's
	// default).
	LatencyConcurrency int
	// ThroughputJobs are queued ahead and drained at each of Concurrency.
	// Defaults 500 and 1, 2, 4, 8.
	ThroughputJobs int
	Concurrency    []int
	// NoWebhook turns off the webhook receiver: latency is then measured
	// to the result only.
	NoWebhook bool
	// Warm is the size of the worker's warm sandbox pool
	// (--warm-sandboxes) in the warm runs, which repeat the sandq floors,
	// latency and throughput with it. Default: LatencyConcurrency, and at
	// least 2. NoWarm skips the warm runs.
	Warm   int
	NoWarm bool
	// NoSnapshots skips the restored runs. Without it the python variants
	// are measured a third and fourth way: by a worker with snapshot
	// templates (jobs.WorkerConfig.Snapshots), each job restored from its
	// image's template on its path, and by one that also keeps Warm
	// sandboxes restored ahead of demand (SnapshotPool).
	NoSnapshots bool
	// Explain adds to each latency run the bare loop run again on the same
	// schedule beside sandq's control plane: at each send the bench also
	// submits the job to a worker whose runner runs no sandbox but holds
	// each job as long as a bare container took (the bare loop's median),
	// so that Redis, MinIO, asynq, the worker's own work, the webhook and
	// the bench's following of results all run beside the bare
	// containers, as they run beside sandq's. Its row against the plain
	// bare row is what the control plane costs the sandboxes; the rest of
	// sandq's overhead is its sandbox path.
	Explain bool
	// MemoryJobs is how many jobs run at once while the child worker's
	// memory is sampled. Default 2.
	MemoryJobs int
	// Seed of the open-loop schedule. Default 1.
	Seed int64

	// SandqBinary is the sandq binary run as a child `sandq worker` to
	// measure an idle worker's memory and its overhead per running job.
	// Required.
	SandqBinary string
	// ImageDir and Image name the image jobs run on. Defaults
	// /var/lib/sandq/images and "default".
	ImageDir, Image string
	// PandasImage is the image, in ImageDir, of the python-pandas
	// variant: one with pandas and matplotlib. Default "analysis".
	PandasImage string
	// Runsc binary and Platform, as for workers. Defaults "runsc", systrap.
	Runsc, Platform string
	// TempDir is where the run's scratch directory is made (Redis and
	// MinIO data, worker state, bare containers). Default os.TempDir().
	TempDir string

	Logger *slog.Logger
	// Progress receives a line per phase; nil discards them.
	Progress io.Writer
}

// Quick returns options for a run of a few minutes: 20 latency jobs,
// 40 throughput jobs at concurrency 1 and 2, 3 floor runs.
func Quick(o Options) Options {
	o.FloorRuns = 3
	o.LatencyJobs = 20
	o.ThroughputJobs = 40
	o.Concurrency = []int{1, 2}
	return o
}

// WithDefaults fills unset fields.
func (o Options) WithDefaults() Options {
	if len(o.Variants) == 0 {
		o.Variants = DefaultVariants()
	}
	if o.FloorRuns == 0 {
		o.FloorRuns = DefaultFloorRuns
	}
	if o.LatencyJobs == 0 {
		o.LatencyJobs = DefaultLatencyJobs
	}
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if o.LatencyConcurrency == 0 {
		o.LatencyConcurrency = runtime.NumCPU()
	}
	if o.ThroughputJobs == 0 {
		o.ThroughputJobs = DefaultThroughputJobs
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = DefaultConcurrency()
	}
	if o.MemoryJobs == 0 {
		o.MemoryJobs = DefaultMemoryJobs
	}
	if o.Warm == 0 {
		o.Warm = max(2, o.LatencyConcurrency)
	}
	if o.Seed == 0 {
		o.Seed = DefaultSeed
	}
	if o.ImageDir == "" {
		o.ImageDir = image.DefaultDir
	}
	if o.Image == "" {
		o.Image = jobs.DefaultImage
	}
	if o.PandasImage == "" {
		o.PandasImage = DefaultPandasImage
	}
	if o.Runsc == "" {
		o.Runsc = executor.DefaultRunsc
	}
	if o.Platform == "" {
		o.Platform = executor.DefaultPlatform
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// Validate names the first bad option.
func (o Options) Validate() error {
	for _, v := range o.Variants {
		if _, ok := variants[v]; !ok {
			return fmt.Errorf("variant %q: want shell, python or python-pandas", v)
		}
	}
	switch {
	case o.FloorRuns < 1:
		return errors.New("floor runs must be at least 1")
	case o.LatencyJobs < 1:
		return errors.New("latency jobs must be at least 1")
	case !(o.Rate > 0) || o.Rate > 1000:
		return fmt.Errorf("rate %v: must be over 0 and at most 1000 jobs/s", o.Rate)
	case o.LatencyConcurrency < 1:
		return errors.New("latency concurrency must be at least 1")
	case o.ThroughputJobs < 1:
		return errors.New("throughput jobs must be at least 1")
	case o.MemoryJobs < 1:
		return errors.New("memory jobs must be at least 1")
	case o.Warm < 1 || o.Warm > executor.MaxWarm:
		return fmt.Errorf("warm sandboxes %d: must be between 1 and %d", o.Warm, executor.MaxWarm)
	case o.SandqBinary == "":
		return errors.New("no sandq binary to run as a child worker")
	}
	for _, c := range o.Concurrency {
		if c < 1 || c > 64 {
			return fmt.Errorf("concurrency %d: must be between 1 and 64", c)
		}
	}
	return nil
}

// Run measures everything the options ask for and returns the report. It
// fails, rather than leaving a row out, when a service, runsc, the image or
// root is missing, or when any job does not succeed.
func Run(ctx context.Context, o Options) (*Report, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	began := time.Now()
	e, err := setup(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("bench set-up: %w", err)
	}
	rep := &Report{StartedAt: began.UTC(), Options: optionsDoc(o)}
	err = e.measure(ctx, rep)
	if cerr := e.close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("bench teardown: %w", cerr))
	}
	if err != nil {
		return nil, err
	}
	rep.FinishedAt = time.Now().UTC()
	rep.DurationSeconds = round1(rep.FinishedAt.Sub(rep.StartedAt).Seconds())
	rep.Conditions.LoadAvgEnd = loadAvg()
	rep.Targets = targets(rep)
	rep.FailedJobs, rep.Failures = e.failed, e.failures
	return rep, nil
}

// measure runs every phase in order.
func (e *env) measure(ctx context.Context, rep *Report) error {
	var err error
	if rep.Conditions, err = e.conditions(ctx); err != nil {
		return err
	}
	for _, name := range e.o.Variants {
		v := variants[name]
		vr := VariantReport{Variant: name, Image: e.imageName(v), NoProcessFloor: v.noProcess}
		if e.snapshots(v) {
			e.progress("%s: snapshot template of image %s (made once, kept beside the image)", name, e.imageName(v))
			if vr.Template, err = e.template(ctx, v); err != nil {
				return fmt.Errorf("%s snapshot template: %w", name, err)
			}
		}
		e.progress("%s: floors (%d serial runs each)", name, e.o.FloorRuns)
		if vr.Floors, vr.FloorStages, err = e.floors(ctx, v); err != nil {
			return fmt.Errorf("%s floors: %w", name, err)
		}
		e.progress("%s: latency, %d jobs open-loop at %.3g/s, concurrency %d", name, e.o.LatencyJobs, e.o.Rate, e.o.LatencyConcurrency)
		if vr.Latency, err = e.latency(ctx, v); err != nil {
			return fmt.Errorf("%s latency: %w", name, err)
		}
		for _, c := range e.o.Concurrency {
			e.progress("%s: throughput, %d jobs at concurrency %d", name, e.o.ThroughputJobs, c)
			row, err := e.throughput(ctx, v, c)
			if err != nil {
				return fmt.Errorf("%s throughput at concurrency %d: %w", name, c, err)
			}
			vr.Throughput = append(vr.Throughput, row)
		}
		vr.Restore = restoreRatios(vr)
		rep.Variants = append(rep.Variants, vr)
	}
	e.progress("memory: child worker idle, then %d jobs running", e.o.MemoryJobs)
	if rep.Memory, err = e.memory(ctx); err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	return e.finishLoad(ctx, &rep.Conditions)
}

// template has a worker with snapshot templates make (or find) the
// template of v's image before anything is measured, so that no measured
// phase pays for building it, and describes it.
func (e *env) template(ctx context.Context, v variant) (*TemplateDoc, error) {
	began := time.Now()
	w, err := e.newWorker(v, fmt.Sprintf("bench-template-%s-%d", v.name, e.next()), 1, mode{key: modeRestored, snapshots: true})
	if err != nil {
		return nil, err
	}
	ready := time.Since(began)
	ts := w.SnapshotTemplates()
	w.Shutdown()
	t := ts[0].Info
	return &TemplateDoc{
		Dir: ts[0].Dir, Digest: t.Digest, Preload: t.Preload, CheckpointBytes: t.CheckpointBytes,
		PreloadMS: t.PreloadMS, CheckpointMS: t.CheckpointMS, Created: t.Created.UTC(), ReadySeconds: round1(ready.Seconds()),
	}, nil
}

func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(e.o.Progress, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
