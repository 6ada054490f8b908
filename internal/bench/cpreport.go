package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sandq/sandq/jobs"
)

// CPReport is a control-plane run: one row per task check interval,
// number of workers and concurrency. Per-job figures divide what was counted while the row's
// jobs were sent and done by the jobs sent.
type CPReport struct {
	StartedAt       time.Time    `json:"started_at"`
	FinishedAt      time.Time    `json:"finished_at"`
	DurationSeconds float64      `json:"duration_seconds"`
	Options         CPOptionsDoc `json:"options"`
	Conditions      CPConditions `json:"conditions"`
	Rows            []CPRow      `json:"rows"`
	FailedJobs      int          `json:"failed_jobs"`
	Failures        []string     `json:"failures,omitempty"`
}

// CPOptionsDoc is what the run was asked to measure.
type CPOptionsDoc struct {
	Workers            []int    `json:"workers"`
	Concurrency        []int    `json:"concurrency"`
	TaskCheckIntervals []string `json:"task_check_intervals"`
	Jobs               int      `json:"jobs"`
	DurationSeconds    float64  `json:"duration_seconds,omitempty"`
	// RatePerSecond is 0 when jobs were sent as fast as Producers could.
	RatePerSecond float64 `json:"rate_per_second"`
	Producers     int     `json:"producers"`
	InputBytes    int64   `json:"input_bytes"`
	OutputFiles   int     `json:"output_files"`
	OutputBytes   int64   `json:"output_bytes"`
	Webhook       bool    `json:"webhook"`
	IdleSeconds   float64 `json:"idle_seconds"`
	Seed          int64   `json:"seed"`
}

func cpOptionsDoc(o ControlPlaneOptions) CPOptionsDoc {
	return CPOptionsDoc{
		Workers: o.Workers, Concurrency: o.Concurrency, TaskCheckIntervals: durationStrings(o.TaskCheckIntervals), Jobs: o.Jobs, DurationSeconds: o.Duration.Seconds(), RatePerSecond: o.Rate,
		Producers: o.Producers, InputBytes: o.InputBytes, OutputFiles: o.OutputFiles, OutputBytes: o.OutputBytes,
		Webhook: !o.NoWebhook, IdleSeconds: o.IdleWindow.Seconds(), Seed: o.Seed,
	}
}

func durationStrings(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

// CPConditions are what the figures depend on besides sandq: the host
// (everything shares it: Redis, MinIO, the producer and the workers), the
// services and the workers' asynq settings (Asynq.TaskCheckInterval lists
// the rows' intervals).
type CPConditions struct {
	CPUs         int             `json:"cpus"`
	CPUModel     string          `json:"cpu_model"`
	MemoryKiB    int64           `json:"memory_kib"`
	Kernel       string          `json:"kernel"`
	GoVersion    string          `json:"go_version"`
	LoadAvgStart string          `json:"loadavg_start"`
	LoadAvgEnd   string          `json:"loadavg_end"`
	Redis        RedisConditions `json:"redis"`
	Asynq        AsynqConditions `json:"asynq"`
	// Completion says how the bench learned that a job was done.
	Completion string `json:"completion"`
}

func (e *cpEnv) conditions(ctx context.Context) (CPConditions, error) {
	mem, err := jobs.HostMemory()
	if err != nil {
		return CPConditions{}, err
	}
	c := CPConditions{
		CPUs: runtime.NumCPU(), CPUModel: cpuModel(), MemoryKiB: mem >> 10, Kernel: kernel(), GoVersion: runtime.Version(), LoadAvgStart: loadAvg(),
		Asynq: AsynqConditions{
			TaskCheckInterval: strings.Join(durationStrings(e.o.TaskCheckIntervals), ","), WebhookConcurrency: e.cfg.Webhook.Concurrency,
			MaxRetry: e.cfg.MaxRetry, ShutdownGrace: e.cfg.Worker.ShutdownGrace.String(),
		},
		Completion: "push: each job's signed webhook reaches a receiver in the bench; latency from the scheduled (open loop) or actual send to its arrival",
	}
	if e.hooks == nil {
		c.Completion = fmt.Sprintf("sweep: one asynq GetQueueInfo every %s (its Redis calls count with the jobs'); latency from the send to the end of the worker's upload (the result's timings)", sweepInterval)
	}
	c.Redis, err = redisConditions(ctx, e.cfg.RedisAddr)
	return c, err
}

// CPRow is one number of workers and concurrency at one task check
// interval.
type CPRow struct {
	Workers           int    `json:"workers"`
	Concurrency       int    `json:"concurrency"`
	TaskCheckInterval string `json:"task_check_interval"`
	// Jobs were sent; Succeeded, Failed and Retried count their results.
	Jobs      int `json:"jobs"`
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Retried   int `json:"retried"`
	// Seconds run from the first send until the last job was done;
	// JobsPerSecond is Succeeded over them. SubmitSeconds run until the
	// last submission returned.
	Seconds            float64 `json:"seconds"`
	JobsPerSecond      float64 `json:"jobs_per_second"`
	SubmitSeconds      float64 `json:"submit_seconds"`
	SubmittedPerSecond float64 `json:"submitted_per_second"`
	// Latency is end to end (see CPConditions.Completion); QueueWait and
	// InWorker are the results' timings.queue_wait_ms and
	// total_in_worker_ms.
	Latency   Dist `json:"latency"`
	QueueWait Dist `json:"queue_wait"`
	InWorker  Dist `json:"in_worker"`
	// Redis, per job.
	Redis CPRedis `json:"redis"`
	// Idle is Redis's load from the row's workers before any job.
	Idle *CPIdle `json:"idle,omitempty"`
	// S3 requests per job, counted at the clients: the producer's store
	// and the workers'.
	S3Producer CPS3 `json:"s3_producer"`
	S3Workers  CPS3 `json:"s3_workers"`
	// MinIO's CPU (/proc), and the bench process's own (producer, workers
	// and webhook receiver together), per job and as a share of one core.
	MinioCPUMsPerJob float64 `json:"minio_cpu_ms_per_job"`
	MinioCPUPercent  float64 `json:"minio_cpu_percent"`
	BenchCPUMsPerJob float64 `json:"bench_cpu_ms_per_job"`
	BenchCPUPercent  float64 `json:"bench_cpu_percent"`

	failures []string
}

// label names the row in the tables' headings: 4x8, and its task check
// interval when the report has several.
func (r *CPReport) label(row CPRow) string {
	l := fmt.Sprintf("%dx%d", row.Workers, row.Concurrency)
	if len(r.Options.TaskCheckIntervals) > 1 {
		l += " @" + row.TaskCheckInterval
	}
	return l
}

// CPRedis is Redis's cost per job, from INFO deltas. Calls count every
// command as Redis's commandstats do: those a script runs count too, under
// their own names, beside the script's call.
type CPRedis struct {
	CallsPerJob       float64 `json:"calls_per_job"`
	ScriptCallsPerJob float64 `json:"script_calls_per_job"`
	NetInBytesPerJob  float64 `json:"net_in_bytes_per_job"`
	NetOutBytesPerJob float64 `json:"net_out_bytes_per_job"`
	// CPUMsPerJob is used_cpu_sys + used_cpu_user; CPUPercent that over
	// the row's time, of one core.
	CPUMsPerJob float64 `json:"cpu_ms_per_job"`
	CPUPercent  float64 `json:"cpu_percent"`
	// CPUBoundJobsPerSecond is one core's worth of Redis CPU over the CPU
	// per job: the ceiling where Redis's main thread would be saturated.
	CPUBoundJobsPerSecond float64 `json:"cpu_bound_jobs_per_second"`
	// MemoryBytesPerJob is the growth of used_memory per job: mostly the
	// completed tasks kept for the result retention.
	MemoryBytesPerJob float64     `json:"memory_bytes_per_job"`
	Commands          []CPCommand `json:"commands"`
}

// CPCommand is one Redis command's calls and time per job.
type CPCommand struct {
	Name        string  `json:"name"`
	CallsPerJob float64 `json:"calls_per_job"`
	UsecPerJob  float64 `json:"usec_per_job"`
}

func sortCommands(cs []CPCommand) {
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].CallsPerJob != cs[j].CallsPerJob {
			return cs[i].CallsPerJob > cs[j].CallsPerJob
		}
		return cs[i].Name < cs[j].Name
	})
}

// CPIdle is Redis's load from idle workers.
type CPIdle struct {
	Seconds        float64 `json:"seconds"`
	CallsPerSecond float64 `json:"calls_per_second"`
	CPUPercent     float64 `json:"cpu_percent"`
}

// CPS3 is S3 requests per job at one side, by HTTP method, and the body
// bytes sent and received; Errors counts requests that failed or were
// answered 4xx/5xx (in all, not per job).
type CPS3 struct {
	RequestsPerJob      float64            `json:"requests_per_job"`
	ByMethod            map[string]float64 `json:"by_method"`
	SentBytesPerJob     float64            `json:"sent_bytes_per_job"`
	ReceivedBytesPerJob float64            `json:"received_bytes_per_job"`
	Errors              int64              `json:"errors"`
}

func (s CPS3) methods() string {
	var ms []string
	for m := range s.ByMethod {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s %g", m, s.ByMethod[m]))
	}
	return strings.Join(parts, ", ")
}

// WriteJSON writes the report to path.
func (r *CPReport) WriteJSON(path string) error { return writeJSON(path, r) }

// cpTopCommands is how many Redis commands the table lists.
const cpTopCommands = 12

// PrintTable writes the report as text tables: a column per row.
func (r *CPReport) PrintTable(out io.Writer) error {
	c, o := r.Conditions, r.Options
	fmt.Fprintf(out, "sandq bench --control-plane, %s, %.0fs\n", r.StartedAt.Format(time.RFC3339), r.DurationSeconds)
	fmt.Fprintf(out, "host: %d CPUs (%s), %s memory, kernel %s, %s, load %s at start, %s at end (Redis, MinIO, producer and workers share it)\n",
		c.CPUs, c.CPUModel, formatKiB(c.MemoryKiB), c.Kernel, c.GoVersion, c.LoadAvgStart, c.LoadAvgEnd)
	fmt.Fprintf(out, "redis %s: appendonly=%s appendfsync=%s save=%q; asynq: task check interval %s (the rows'), webhook concurrency %d, max retry %d\n",
		c.Redis.Version, c.Redis.AppendOnly, c.Redis.AppendFsync, c.Redis.Save, c.Asynq.TaskCheckInterval, c.Asynq.WebhookConcurrency, c.Asynq.MaxRetry)
	send := fmt.Sprintf("as fast as %d producers can", o.Producers)
	if o.RatePerSecond > 0 {
		send = fmt.Sprintf("open loop at %.3g/s (seed %d)", o.RatePerSecond, o.Seed)
	}
	fmt.Fprintf(out, "jobs: one %d-byte input, %d output file(s) of %d bytes each, sent %s; runner: no sandbox (writes the outputs, exits 0)\n",
		o.InputBytes, o.OutputFiles, o.OutputBytes, send)
	fmt.Fprintf(out, "completion: %s\n\n", c.Completion)

	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	line := func(name string, f func(CPRow) string) {
		fmt.Fprintf(w, "%s\t", name)
		for _, row := range r.Rows {
			fmt.Fprintf(w, "%s\t", f(row))
		}
		fmt.Fprintf(w, "\n")
	}
	num := func(f func(CPRow) float64) func(CPRow) string {
		return func(row CPRow) string { return fmt.Sprintf("%g", f(row)) }
	}
	line("workers x concurrency", func(row CPRow) string { return fmt.Sprintf("%dx%d", row.Workers, row.Concurrency) })
	line("task check interval", func(row CPRow) string { return row.TaskCheckInterval })
	line("jobs sent / succeeded / failed", func(row CPRow) string { return fmt.Sprintf("%d/%d/%d", row.Jobs, row.Succeeded, row.Failed) })
	line("jobs/s (first send to last done)", num(func(row CPRow) float64 { return row.JobsPerSecond }))
	line("submitted/s", num(func(row CPRow) float64 { return row.SubmittedPerSecond }))
	line("latency p50 / p99 ms", func(row CPRow) string { return fmt.Sprintf("%.1f / %.1f", row.Latency.P50, row.Latency.P99) })
	line("queue wait p50 / p99 ms", func(row CPRow) string { return fmt.Sprintf("%.0f / %.0f", row.QueueWait.P50, row.QueueWait.P99) })
	line("in worker p50 / p99 ms", func(row CPRow) string { return fmt.Sprintf("%.0f / %.0f", row.InWorker.P50, row.InWorker.P99) })
	line("redis calls/job (scripts)", func(row CPRow) string {
		return fmt.Sprintf("%g (%g)", row.Redis.CallsPerJob, row.Redis.ScriptCallsPerJob)
	})
	line("redis bytes in / out per job", func(row CPRow) string {
		return fmt.Sprintf("%.0f / %.0f", row.Redis.NetInBytesPerJob, row.Redis.NetOutBytesPerJob)
	})
	line("redis cpu ms/job", num(func(row CPRow) float64 { return row.Redis.CPUMsPerJob }))
	line("redis cpu % of a core", num(func(row CPRow) float64 { return row.Redis.CPUPercent }))
	line("redis-cpu-bound jobs/s", num(func(row CPRow) float64 { return row.Redis.CPUBoundJobsPerSecond }))
	line("redis memory bytes/job", num(func(row CPRow) float64 { return row.Redis.MemoryBytesPerJob }))
	line("s3 producer requests/job", num(func(row CPRow) float64 { return row.S3Producer.RequestsPerJob }))
	line("s3 workers requests/job", num(func(row CPRow) float64 { return row.S3Workers.RequestsPerJob }))
	line("s3 bytes up / down per job", func(row CPRow) string {
		return fmt.Sprintf("%.0f / %.0f", row.S3Producer.SentBytesPerJob+row.S3Workers.SentBytesPerJob, row.S3Producer.ReceivedBytesPerJob+row.S3Workers.ReceivedBytesPerJob)
	})
	line("s3 errors", func(row CPRow) string { return fmt.Sprintf("%d", row.S3Producer.Errors+row.S3Workers.Errors) })
	line("minio cpu ms/job", num(func(row CPRow) float64 { return row.MinioCPUMsPerJob }))
	line("minio cpu % of a core", num(func(row CPRow) float64 { return row.MinioCPUPercent }))
	line("bench process cpu ms/job", num(func(row CPRow) float64 { return row.BenchCPUMsPerJob }))
	line("bench process cpu % of a core", num(func(row CPRow) float64 { return row.BenchCPUPercent }))
	line("idle: redis calls/s", func(row CPRow) string {
		if row.Idle == nil {
			return "-"
		}
		return fmt.Sprintf("%g", row.Idle.CallsPerSecond)
	})
	line("idle: redis cpu %", func(row CPRow) string {
		if row.Idle == nil {
			return "-"
		}
		return fmt.Sprintf("%g", row.Idle.CPUPercent)
	})
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n")
	for _, row := range r.Rows {
		fmt.Fprintf(out, "s3 requests/job by method, %s: producer %s; workers %s\n", r.label(row), row.S3Producer.methods(), row.S3Workers.methods())
	}
	fmt.Fprintf(out, "\n")
	r.printCommands(w)
	if err := w.Flush(); err != nil {
		return err
	}
	if r.FailedJobs > 0 {
		fmt.Fprintf(out, "\n%d jobs did not succeed; first reasons:\n", r.FailedJobs)
		for _, f := range r.Failures {
			fmt.Fprintf(out, "  %s\n", f)
		}
	}
	return nil
}

// printCommands lists the Redis commands with the most calls per job (in
// any row), calls and microseconds per job, a column pair per row.
func (r *CPReport) printCommands(w io.Writer) {
	most := map[string]float64{}
	for _, row := range r.Rows {
		for _, c := range row.Redis.Commands {
			most[c.Name] = max(most[c.Name], c.CallsPerJob)
		}
	}
	var names []string
	for n := range most {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if most[names[i]] != most[names[j]] {
			return most[names[i]] > most[names[j]]
		}
		return names[i] < names[j]
	})
	fmt.Fprintf(w, "redis command: calls / usec per job\t")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%s\t", r.label(row))
	}
	fmt.Fprintf(w, "\n")
	for i, n := range names {
		if i == cpTopCommands {
			fmt.Fprintf(w, "(%d more in the JSON)\t\n", len(names)-i)
			break
		}
		fmt.Fprintf(w, "%s\t", n)
		for _, row := range r.Rows {
			cell := "-"
			for _, c := range row.Redis.Commands {
				if c.Name == n {
					cell = fmt.Sprintf("%g / %g", c.CallsPerJob, c.UsecPerJob)
				}
			}
			fmt.Fprintf(w, "%s\t", cell)
		}
		fmt.Fprintf(w, "\n")
	}
}
