package bench

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs"
)

// Conditions are what the numbers depend on besides sandq.
type Conditions struct {
	CPUs         int    `json:"cpus"`
	CPUModel     string `json:"cpu_model"`
	MemoryKiB    int64  `json:"memory_kib"`
	Kernel       string `json:"kernel"`
	GoVersion    string `json:"go_version"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	Image        string `json:"image"`
	// JobLimits are the limits every job (sandq's and the bare
	// containers') ran under.
	JobLimits string          `json:"job_limits"`
	Runsc     RunscConditions `json:"runsc"`
	Redis     RedisConditions `json:"redis"`
	Asynq     AsynqConditions `json:"asynq"`
	// Completion says how the bench learns that a sandq job is done.
	Completion string `json:"completion"`
	// BenchLoad is what the bench itself cost while it measured.
	BenchLoad BenchLoad `json:"bench_load"`
}

// BenchLoad is the bench process's own CPU and Redis's load over the
// measurements, from the first floor to the end of the memory run, and
// the same for each sandq phase alone. The sandq workers of the floors,
// latency and throughput runs run inside the bench process, so its CPU is
// theirs, the producer's and the bench's own bookkeeping together; the
// runsc commands and sandboxes are processes of their own and are not
// counted (nor is the memory run's child worker).
type BenchLoad struct {
	WallSeconds float64 `json:"wall_seconds"`
	// CPUSeconds is the process's user + system time (getrusage
	// RUSAGE_SELF); CPUPercent is that over WallSeconds, of one core.
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent"`
	// RedisCommands is the growth of Redis's total_commands_processed
	// (INFO stats): every client's commands, the workers', the producer's
	// and the bench's; RedisCommandsPerSecond is that over WallSeconds.
	RedisCommands          int64   `json:"redis_commands"`
	RedisCommandsPerSecond float64 `json:"redis_commands_per_second"`
	// SandqPhases are the same for each sandq phase, per job.
	SandqPhases []PhaseLoad `json:"sandq_phases"`
}

// PhaseLoad is one sandq phase's cost: from its first enqueue until its
// worker has shut down. Jobs counts the phase's warm-up job too.
type PhaseLoad struct {
	Phase                  string  `json:"phase"`
	Jobs                   int     `json:"jobs"`
	Seconds                float64 `json:"seconds"`
	CPUMsPerJob            float64 `json:"cpu_ms_per_job"`
	CPUPercent             float64 `json:"cpu_percent"`
	RedisCommandsPerJob    float64 `json:"redis_commands_per_job"`
	RedisCommandsPerSecond float64 `json:"redis_commands_per_second"`
}

// usage is one reading of what BenchLoad is made of.
type usage struct {
	at       time.Time
	cpu      time.Duration
	commands int64
}

// loadMeter reads the bench's CPU and Redis's command count, and keeps
// the sandq phases' figures until the run's end.
type loadMeter struct {
	rdb    *redis.Client
	start  usage
	mu     sync.Mutex
	phases []PhaseLoad
}

// startLoad starts measuring the bench's load (e.load); finishLoad ends it.
func (e *env) startLoad(ctx context.Context) error {
	m := &loadMeter{rdb: redis.NewClient(&redis.Options{Addr: e.cfg.RedisAddr})}
	e.cleanup.Add("load meter", func(context.Context) error { return m.rdb.Close() })
	var err error
	if m.start, err = m.read(ctx); err != nil {
		return err
	}
	e.load = m
	return nil
}

// finishLoad fills c's BenchLoad with the load since startLoad.
func (e *env) finishLoad(ctx context.Context, c *Conditions) error {
	end, err := e.load.read(ctx)
	if err != nil {
		return err
	}
	wall := end.at.Sub(e.load.start.at).Seconds()
	cpu := (end.cpu - e.load.start.cpu).Seconds()
	n := end.commands - e.load.start.commands
	e.load.mu.Lock()
	defer e.load.mu.Unlock()
	c.BenchLoad = BenchLoad{
		WallSeconds: round1(wall), CPUSeconds: round2(cpu), CPUPercent: round1(cpu / wall * 100),
		RedisCommands: n, RedisCommandsPerSecond: round1(float64(n) / wall), SandqPhases: e.load.phases,
	}
	return nil
}

// read reads the process's CPU time and Redis's command count.
func (m *loadMeter) read(ctx context.Context) (usage, error) {
	u := usage{at: time.Now()}
	var err error
	if u.cpu, err = selfCPU(); err != nil {
		return u, err
	}
	info, err := m.rdb.Info(ctx, "stats").Result()
	if err != nil {
		return u, fmt.Errorf("redis INFO stats: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			if u.commands, err = strconv.ParseInt(v, 10, 64); err != nil {
				return u, fmt.Errorf("redis INFO stats: total_commands_processed %q: %w", v, err)
			}
			return u, nil
		}
	}
	return u, errors.New("redis INFO stats has no total_commands_processed")
}

// measured runs fn, the sandq phase named name of jobs jobs, and records
// its cost among the conditions.
func measured[T any](ctx context.Context, e *env, name string, jobs int, fn func() (T, error)) (T, error) {
	before, err := e.load.read(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	out, err := fn()
	if err != nil {
		return out, err
	}
	after, err := e.load.read(ctx)
	if err != nil {
		return out, err
	}
	wall := after.at.Sub(before.at).Seconds()
	cpu := (after.cpu - before.cpu).Seconds()
	n := float64(after.commands - before.commands)
	e.load.mu.Lock()
	defer e.load.mu.Unlock()
	e.load.phases = append(e.load.phases, PhaseLoad{
		Phase: name, Jobs: jobs, Seconds: round1(wall), CPUMsPerJob: round1(cpu * 1000 / float64(jobs)), CPUPercent: round1(cpu / wall * 100),
		RedisCommandsPerJob: round1(n / float64(jobs)), RedisCommandsPerSecond: round1(n / wall),
	})
	return out, nil
}

// phaseName names a sandq phase of variant v in mode m: "shell serial",
// "python open loop, 2 warm", "python-pandas serial, restored".
func phaseName(v variant, what string, m mode) string {
	return v.name + " " + what + m.suffix()
}

// RunscConditions describe the runsc binary and how it was run.
type RunscConditions struct {
	Path string `json:"path"`
	// ModuleVersion is the gVisor module version Go recorded in the binary
	// (what `go version -m` prints); GoVersion the toolchain that built it.
	ModuleVersion string `json:"module_version"`
	GoVersion     string `json:"go_version"`
	// VersionOutput is what `runsc --version` prints.
	VersionOutput string `json:"version_output"`
	// Flags are the global flags of every container, sandq's and the bare
	// ones, with per-container paths abbreviated.
	Flags []string `json:"flags"`
	// Calls are the runsc commands per bare container, with the flags only
	// create gets before the first.
	Calls []string `json:"calls"`
	// SandqCalls are a sandq sandbox's: no runsc wait, the exit status is
	// read from the boot log as soon as it is written.
	SandqCalls []string `json:"sandq_calls"`
}

// RedisConditions are the bench Redis's version and persistence.
type RedisConditions struct {
	Version     string `json:"version"`
	AppendOnly  string `json:"appendonly"`
	AppendFsync string `json:"appendfsync"`
	Save        string `json:"save"`
}

// AsynqConditions are the workers' asynq settings (jobs.Config defaults).
type AsynqConditions struct {
	TaskCheckInterval  string `json:"task_check_interval"`
	WebhookConcurrency int    `json:"webhook_concurrency"`
	MaxRetry           int    `json:"max_retry"`
	ShutdownGrace      string `json:"shutdown_grace"`
}

// conditions reads the run's conditions and starts measuring the bench's
// own load (finishLoad ends it).
func (e *env) conditions(ctx context.Context) (Conditions, error) {
	if err := e.startLoad(ctx); err != nil {
		return Conditions{}, err
	}
	mem, err := jobs.HostMemory()
	if err != nil {
		return Conditions{}, err
	}
	l := e.cfg.DefaultLimits
	c := Conditions{
		CPUs: runtime.NumCPU(), CPUModel: cpuModel(), MemoryKiB: mem >> 10, Kernel: kernel(), GoVersion: runtime.Version(),
		LoadAvgStart: loadAvg(), Image: e.cfg.ImagePath(),
		JobLimits: fmt.Sprintf("timeout %s, memory %s, disk %s, outputs %s/%d files, pids %d", l.Timeout, jobs.FormatSize(l.Memory),
			jobs.FormatSize(l.Disk), jobs.FormatSize(l.OutputBytes), l.OutputFiles, e.cfg.Worker.Pids),
		Completion: e.completion(),
		Asynq: AsynqConditions{
			TaskCheckInterval: e.cfg.Worker.TaskCheckInterval.String(), WebhookConcurrency: e.cfg.Webhook.Concurrency,
			MaxRetry: e.cfg.MaxRetry, ShutdownGrace: e.cfg.Worker.ShutdownGrace.String(),
		},
	}
	c.Runsc = RunscConditions{
		Path: e.runsc.Path, ModuleVersion: e.runsc.Version,
		Flags: e.bare.Flags("<sandbox>/overlay", l.Disk),
		Calls: []string{
			strings.Join(e.bare.CreateFlags("<sandbox>/logs/runsc"), " ") + " create --bundle <sandbox>/bundle <id>",
			"start <id>", "wait <id>", "delete --force <id>",
		},
		SandqCalls: []string{
			strings.Join(e.bare.CreateFlags("<sandbox>/logs/runsc"), " ") + " create --pid-file <sandbox>/sandbox.pid --bundle <sandbox>/bundle <id>",
			"start <id>", "(exit status from the boot log, sandbox process by pidfd)", "delete --force <id>",
		},
	}
	for i, f := range c.Runsc.Flags {
		if v, ok := strings.CutPrefix(f, "--root="); ok {
			c.Runsc.Flags[i] = "--root=<state>/" + filepath.Base(v)
		}
	}
	if bi, err := buildinfo.ReadFile(e.runsc.Path); err == nil {
		c.Runsc.GoVersion = bi.GoVersion
	}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(vctx, e.runsc.Path, "--version").CombinedOutput()
	if err != nil {
		return c, fmt.Errorf("runsc --version: %w", err)
	}
	c.Runsc.VersionOutput = strings.Join(strings.Fields(string(out)), " ")
	c.Redis, err = redisConditions(ctx, e.cfg.RedisAddr)
	return c, err
}

// redisConditions reads the Redis server's version and persistence.
func redisConditions(ctx context.Context, addr string) (RedisConditions, error) {
	var c RedisConditions
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	get := func(key string) (string, error) {
		v, err := rdb.ConfigGet(ctx, key).Result()
		if err != nil {
			return "", fmt.Errorf("redis CONFIG GET %s: %w", key, err)
		}
		return v[key], nil
	}
	var err error
	if c.AppendOnly, err = get("appendonly"); err != nil {
		return c, err
	}
	if c.AppendFsync, err = get("appendfsync"); err != nil {
		return c, err
	}
	if c.Save, err = get("save"); err != nil {
		return c, err
	}
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return c, fmt.Errorf("redis INFO: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			c.Version = v
		}
	}
	return c, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
