package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/executortest"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
	"github.com/sandq/sandq/worker"
)

// Defaults of ControlPlaneOptions.
const (
	DefaultCPJobs        = 1000
	DefaultCPProducers   = 8
	DefaultCPInputBytes  = 1 << 10
	DefaultCPOutputFiles = 1
	DefaultCPOutputBytes = 1 << 10
	DefaultCPIdleWindow  = 5 * time.Second
	// MaxCPWorkers bounds the in-process workers of a row.
	MaxCPWorkers = 64
	// MinCPTaskCheckInterval and MaxCPTaskCheckInterval bound
	// ControlPlaneOptions.TaskCheckIntervals as jobs.Config.Validate
	// bounds a worker's.
	MinCPTaskCheckInterval = time.Millisecond
	MaxCPTaskCheckInterval = time.Minute
)

// DefaultCPWorkers returns ControlPlaneOptions.Workers' default.
func DefaultCPWorkers() []int { return []int{1, 4} }

// DefaultCPConcurrency returns ControlPlaneOptions.Concurrency's default.
func DefaultCPConcurrency() []int { return []int{8} }

// DefaultCPTaskCheckIntervals returns
// ControlPlaneOptions.TaskCheckIntervals' default: the workers'.
func DefaultCPTaskCheckIntervals() []time.Duration {
	return []time.Duration{jobs.DefaultTaskCheckInterval}
}

// sweepInterval is how often, without webhooks, the bench asks asynq how
// many of a row's jobs are done (one GetQueueInfo: a handful of Redis
// calls, counted with the jobs').
const sweepInterval = 100 * time.Millisecond

// cpScript is the control-plane job's script: the no-sandbox runner never
// runs it, but it is uploaded and fetched as a real one.
const cpScript = "#!/bin/sh\n# control-plane bench: the runner writes the outputs without running this\n"

// ControlPlaneOptions say what the control-plane bench measures: the
// queue and store path alone, through workers whose runner runs no
// sandbox. Each triple of TaskCheckIntervals, Workers and Concurrency is
// one row.
type ControlPlaneOptions struct {
	// Workers are the numbers of in-process workers of the rows, each
	// with Concurrency jobs at once. Defaults 1,4 and 8.
	Workers     []int
	Concurrency []int
	// TaskCheckIntervals are the workers' task check intervals
	// (jobs.WorkerConfig.TaskCheckInterval: how often an idle server
	// polls its queues), a set of rows each. Default the workers'
	// default alone.
	TaskCheckIntervals []time.Duration
	// Jobs submitted per row. Default 1000. With Duration, the producer
	// submits for that long instead (open loop: Rate × Duration jobs).
	Jobs     int
	Duration time.Duration
	// Rate sends jobs open-loop at this many per second on average
	// (exponential gaps, seeded by Seed); 0 sends them as fast as
	// Producers goroutines can.
	Rate      float64
	Producers int
	Seed      int64
	// InputBytes is the size of each job's one input; OutputFiles files of
	// OutputBytes each are what the runner writes for each job. Defaults
	// 1 KiB, 1, 1 KiB.
	InputBytes  int64
	OutputFiles int
	OutputBytes int64
	// NoWebhook sends jobs without a webhook: completion is then learned
	// by a queue sweep, and latency ends with the worker's upload.
	NoWebhook bool
	// IdleWindow is how long each row's workers are watched idle before
	// the jobs are sent. Default 5s.
	IdleWindow time.Duration
	// TempDir is where the run's scratch directory is made. Default
	// os.TempDir().
	TempDir  string
	Logger   *slog.Logger
	Progress io.Writer
}

// WithDefaults fills unset fields.
func (o ControlPlaneOptions) WithDefaults() ControlPlaneOptions {
	if len(o.Workers) == 0 {
		o.Workers = DefaultCPWorkers()
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = DefaultCPConcurrency()
	}
	if len(o.TaskCheckIntervals) == 0 {
		o.TaskCheckIntervals = DefaultCPTaskCheckIntervals()
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultCPJobs
	}
	if o.Producers == 0 {
		o.Producers = DefaultCPProducers
	}
	if o.Seed == 0 {
		o.Seed = DefaultSeed
	}
	if o.InputBytes == 0 {
		o.InputBytes = DefaultCPInputBytes
	}
	if o.OutputFiles == 0 {
		o.OutputFiles = DefaultCPOutputFiles
	}
	if o.OutputBytes == 0 {
		o.OutputBytes = DefaultCPOutputBytes
	}
	if o.IdleWindow == 0 {
		o.IdleWindow = DefaultCPIdleWindow
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

// Validate names the first bad option. Sizes are bounded by the job
// limits' defaults (jobs.DefaultLimits), which every job runs under.
func (o ControlPlaneOptions) Validate() error {
	lim := jobs.Config{}.WithDefaults().DefaultLimits
	for _, n := range o.Workers {
		if n < 1 || n > MaxCPWorkers {
			return fmt.Errorf("workers %d: must be between 1 and %d", n, MaxCPWorkers)
		}
	}
	for _, c := range o.Concurrency {
		if c < 1 || c > 64 {
			return fmt.Errorf("concurrency %d: must be between 1 and 64", c)
		}
	}
	for _, d := range o.TaskCheckIntervals {
		if d < MinCPTaskCheckInterval || d > MaxCPTaskCheckInterval {
			return fmt.Errorf("task check interval %s: must be between %s and %s", d, MinCPTaskCheckInterval, MaxCPTaskCheckInterval)
		}
	}
	switch {
	case o.Jobs < 1:
		return fmt.Errorf("jobs %d: must be at least 1", o.Jobs)
	case o.Duration < 0:
		return fmt.Errorf("duration %s: must not be negative", o.Duration)
	case o.Rate < 0 || o.Rate > 1000 || math.IsNaN(o.Rate):
		return fmt.Errorf("rate %v: must be 0 (as fast as possible) or up to 1000 jobs/s", o.Rate)
	case o.Rate > 0 && o.Duration > 0 && o.Rate*o.Duration.Seconds() < 1:
		return fmt.Errorf("rate %v for %s: sends no job", o.Rate, o.Duration)
	case o.Producers < 1 || o.Producers > 256:
		return fmt.Errorf("producers %d: must be between 1 and 256", o.Producers)
	case o.InputBytes < 1 || o.InputBytes > jobs.DefaultMaxInputSize:
		return fmt.Errorf("input bytes %d: must be between 1 and %d", o.InputBytes, int64(jobs.DefaultMaxInputSize))
	case o.OutputFiles < 1 || o.OutputFiles > lim.OutputFiles:
		return fmt.Errorf("output files %d: must be between 1 and %d (the default job limit)", o.OutputFiles, lim.OutputFiles)
	case o.OutputBytes < 1 || int64(o.OutputFiles)*o.OutputBytes > lim.OutputBytes:
		return fmt.Errorf("output bytes %d: %d files of it must fit the default job limit of %s", o.OutputBytes, o.OutputFiles, jobs.FormatSize(lim.OutputBytes))
	case o.IdleWindow < 0:
		return fmt.Errorf("idle window %s: must not be negative", o.IdleWindow)
	}
	return nil
}

// cpEnv is a control-plane run's services and clients.
type cpEnv struct {
	o        ControlPlaneOptions
	dir      string
	stack    *devstack.Stack
	cfg      jobs.Config
	client   *jobs.Client
	insp     *asynq.Inspector
	rdb      *redis.Client
	hooks    *receiver
	producer *s3Counter
	input    string
	output   []byte
	cleanup  cleanup.Stack
	seq      int
}

// RunControlPlane measures each row the options ask for and returns the
// report. It needs redis-server and minio, not root: no sandbox runs.
func RunControlPlane(ctx context.Context, o ControlPlaneOptions) (*CPReport, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	began := time.Now()
	e, err := setupControlPlane(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("control-plane bench set-up: %w", err)
	}
	rep := &CPReport{StartedAt: began.UTC(), Options: cpOptionsDoc(o)}
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
	return rep, nil
}

func (e *cpEnv) measure(ctx context.Context, rep *CPReport) error {
	var err error
	if rep.Conditions, err = e.conditions(ctx); err != nil {
		return err
	}
	for _, shape := range e.o.shapes() {
		e.progress("%s: %s", shape, e.sendPlan())
		row, err := e.row(ctx, shape)
		if err != nil {
			return fmt.Errorf("%s: %w", shape, err)
		}
		rep.Rows = append(rep.Rows, row)
		rep.FailedJobs += row.Failed
		rep.Failures = append(rep.Failures, row.failures...)
	}
	return nil
}

// cpShape is what makes a row: its workers, their concurrency and task
// check interval.
type cpShape struct {
	workers, concurrency int
	interval             time.Duration
}

func (s cpShape) String() string {
	return fmt.Sprintf("%d workers x concurrency %d, task check interval %s", s.workers, s.concurrency, s.interval)
}

// shapes are the rows the options ask for, in order: by task check
// interval, then workers, then concurrency.
func (o ControlPlaneOptions) shapes() []cpShape {
	var out []cpShape
	for _, d := range o.TaskCheckIntervals {
		for _, n := range o.Workers {
			for _, c := range o.Concurrency {
				out = append(out, cpShape{workers: n, concurrency: c, interval: d})
			}
		}
	}
	return out
}

func (e *cpEnv) sendPlan() string {
	what := fmt.Sprintf("%d jobs", e.o.Jobs)
	if e.o.Duration > 0 {
		what = "jobs for " + e.o.Duration.String()
	}
	if e.o.Rate > 0 {
		return fmt.Sprintf("%s open-loop at %.3g/s", what, e.o.Rate)
	}
	return fmt.Sprintf("%s as fast as %d producers can", what, e.o.Producers)
}

func (e *cpEnv) progress(format string, args ...any) {
	fmt.Fprintf(e.o.Progress, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// setupControlPlane starts Redis (with AOF, as production runs it) and
// MinIO in a scratch directory, and makes the producer (its store's
// requests counted), the stats client and the webhook receiver.
func setupControlPlane(ctx context.Context, o ControlPlaneOptions) (_ *cpEnv, err error) {
	for _, bin := range []string{"redis-server", "minio"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed: %w (scripts/install-deps.sh installs what sandq needs)", bin, err)
		}
	}
	dir, err := os.MkdirTemp(o.TempDir, "sandq-bench-cp-")
	if err != nil {
		return nil, err
	}
	e := &cpEnv{o: o, dir: dir, producer: newS3Counter(), input: strings.Repeat("x", int(o.InputBytes)),
		output: []byte(strings.Repeat("o", int(o.OutputBytes)))}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()
	imageDir, err := noSandboxImage(filepath.Join(dir, "images"))
	if err != nil {
		return nil, err
	}
	var cfg jobs.Config
	if e.stack, cfg, err = startStack(ctx, dir, o.Logger, &e.cleanup); err != nil {
		return nil, err
	}
	cfg.Worker.ImageDir = imageDir
	e.cfg = cfg.WithDefaults()
	if err := e.cfg.Validate(); err != nil {
		return nil, err
	}
	scfg := e.cfg.Storage
	scfg.WrapTransport = e.producer.wrap
	store, err := storage.New(scfg)
	if err != nil {
		return nil, err
	}
	if err := store.EnsureBucket(ctx); err != nil {
		return nil, fmt.Errorf("bucket: %w", err)
	}
	if e.client, err = jobs.NewClient(e.cfg, store, o.Logger); err != nil {
		return nil, err
	}
	e.cleanup.Add("client", func(context.Context) error { return e.client.Close() })
	opt, err := e.cfg.RedisConn()
	if err != nil {
		return nil, err
	}
	e.insp = asynq.NewInspector(opt)
	e.cleanup.Add("inspector", func(context.Context) error { return e.insp.Close() })
	e.rdb = redis.NewClient(&redis.Options{Addr: e.cfg.RedisAddr})
	e.cleanup.Add("stats client", func(context.Context) error { return e.rdb.Close() })
	if !o.NoWebhook {
		if e.hooks, err = newReceiver(e.cfg.Webhook.Secrets["*"]); err != nil {
			return nil, err
		}
		e.cleanup.Add("webhook receiver", func(context.Context) error { return e.hooks.close() })
	}
	return e, nil
}

// noSandboxImage makes the smallest image a worker accepts (a root
// filesystem with /bin and a non-empty /tmp) under dir: the no-sandbox
// runner never looks inside it.
func noSandboxImage(dir string) (string, error) {
	root := filepath.Join(dir, jobs.DefaultImage, "rootfs")
	for _, d := range []string{"bin", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "tmp", ".sandq"), nil, 0o644); err != nil {
		return "", err
	}
	return dir, nil
}

func (e *cpEnv) close() error {
	if err := e.cleanup.Release(context.Background()); err != nil {
		return fmt.Errorf("%w (scratch directory kept: %s)", err, e.dir)
	}
	return os.RemoveAll(e.dir)
}

// noSandboxJob is what the no-sandbox runner does for every job: write
// the outputs and exit 0 at once. The worker collects and uploads them, as
// a sandbox's.
func (e *cpEnv) noSandboxJob(_ context.Context, sb *executortest.Sandbox) executortest.Run {
	for i := range e.o.OutputFiles {
		if err := os.WriteFile(filepath.Join(sb.OutputsDir(), fmt.Sprintf("out-%03d.txt", i)), e.output, 0o644); err != nil {
			return executortest.Run{Err: err}
		}
	}
	zero := 0
	return executortest.Run{Outcome: executor.Outcome{ExitCode: &zero}, Stdout: "ok\n"}
}

// startWorkers starts the shape's in-process workers serving queue, each
// with its own store whose requests count in counter, and each with the
// no-sandbox runner.
func (e *cpEnv) startWorkers(ctx context.Context, queue string, shape cpShape, counter *s3Counter) (stop func(), err error) {
	var ws []*worker.Worker
	stop = func() {
		for _, w := range ws {
			w.Shutdown()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for i := range shape.workers {
		cfg := e.cfg
		cfg.Worker.Concurrency = shape.concurrency
		cfg.Worker.TaskCheckInterval = shape.interval
		cfg.Worker.Queues = map[string]int{queue: 1}
		cfg.Storage.WrapTransport = counter.wrap
		store, err := storage.New(cfg.Storage)
		if err != nil {
			return stop, err
		}
		dir := filepath.Join(e.dir, "sandboxes", fmt.Sprintf("%s-%d", queue, i))
		runner := &executortest.Runner{Dir: dir, Job: e.noSandboxJob}
		w, err := worker.New(cfg, runner, store, e.o.Logger)
		if err != nil {
			return stop, err
		}
		if err := w.Start(ctx); err != nil {
			return stop, err
		}
		ws = append(ws, w)
	}
	return stop, nil
}

// submission is one control-plane job.
func (e *cpEnv) submission(queue string) jobs.Submission {
	url := ""
	if e.hooks != nil {
		url = e.hooks.url
	}
	return jobs.Submission{
		Script:  memFile("job.sh", cpScript),
		Inputs:  []jobs.File{memFile(inputName, e.input)},
		Runtime: jobs.RuntimeShell,
		Queue:   queue,
		Webhook: url,
	}
}

// checkResult refuses a result that is not the no-sandbox job's success.
func (e *cpEnv) checkResult(r *jobs.Result) error {
	if r.Status != jobs.StatusSucceeded {
		return fmt.Errorf("job %s ended %s (%s)", r.ID, r.Status, r.Reason)
	}
	if len(r.Outputs) != e.o.OutputFiles {
		return fmt.Errorf("job %s: %d outputs, want %d", r.ID, len(r.Outputs), e.o.OutputFiles)
	}
	for _, out := range r.Outputs {
		if out.Size != e.o.OutputBytes || out.URL == "" {
			return fmt.Errorf("job %s: output %s of %d bytes (link %q), want %d bytes and a link", r.ID, out.Path, out.Size, out.URL, e.o.OutputBytes)
		}
	}
	if r.Stdout == nil || r.Stdout.URL == "" || r.Timings == nil {
		return fmt.Errorf("job %s: result without its stdout link or timings", r.ID)
	}
	return nil
}
