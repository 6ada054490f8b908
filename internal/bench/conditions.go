package bench

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
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
	// ResultPoll is how often the bench polls asynq for a followed job's
	// result.
	ResultPoll string `json:"result_poll"`
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

func (e *env) conditions(ctx context.Context) (Conditions, error) {
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
		ResultPoll: resultPoll.String(),
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
