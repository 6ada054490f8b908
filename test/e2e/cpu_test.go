package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

// busyLoop spins on one thread for about 3 seconds of wall-clock time.
const busyLoop = `import time
end = time.time() + 3
n = 0
while time.time() < end:
    n += 1
print(n)
`

// cpuShare is the share of a core a finished job got: its sandbox's CPU
// time over its run time. It fails the test when cpu_seconds is missing
// or not plausible: over 0, and at most what cpus cores could give in the
// run time (with 10% and 0.3s of slack for the clocks' granularity).
func cpuShare(t *testing.T, r *jobs.Result, cpus float64) float64 {
	t.Helper()
	wantStatus(t, r, jobs.StatusSucceeded)
	if r.Limits.CPUs != cpus {
		t.Errorf("job %s: limits.cpus %v, want %v", r.ID, r.Limits.CPUs, cpus)
	}
	if r.CPUSeconds == nil {
		t.Fatalf("job %s (%s): no cpu_seconds", r.ID, r.Timings.StartMode)
	}
	wall := float64(r.DurationMS) / 1000
	if *r.CPUSeconds <= 0 || *r.CPUSeconds > wall*cpus*1.1+0.3 {
		t.Fatalf("job %s: cpu_seconds %v in %vs of run time under %v CPUs: not plausible", r.ID, *r.CPUSeconds, wall, cpus)
	}
	share := *r.CPUSeconds / wall
	t.Logf("job %s (%s, %v CPUs): %vs of CPU in %vs: %.2f of a core", r.ID, r.Timings.StartMode, cpus, *r.CPUSeconds, wall, share)
	return share
}

// quotaWatch records the CPU quotas (in microseconds per 100ms period;
// -1 for none) the cgroups of a runner's sandboxes have, read every 50ms
// until stopped.
type quotaWatch struct {
	stop func() map[string]bool
}

func watchQuotas(t *testing.T, x *sandqtest.Worker) *quotaWatch {
	t.Helper()
	v1, v2, err := runsc.CgroupRoots()
	if err != nil {
		t.Fatal(err)
	}
	root, file := v2, "cpu.max"
	if r, ok := v1["cpu"]; ok {
		root, file = r, "cpu.cfs_quota_us"
	}
	pattern := filepath.Join(root, executor.DefaultCgroupParent, x.Runner.WorkerID(), "*", file)
	var mu sync.Mutex
	seen := map[string]bool{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			files, _ := filepath.Glob(pattern)
			for _, f := range files {
				if b, err := os.ReadFile(f); err == nil {
					mu.Lock()
					seen[strings.Fields(string(b)+" ?")[0]] = true
					mu.Unlock()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return &quotaWatch{stop: func() map[string]bool {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return seen
	}}
}

// A busy loop with --cpus 0.25 gets about a quarter of a core, in a cold
// sandbox and in a warm one (created before its job, under the queue's
// default of one CPU): its sandbox's cgroup has the job's quota while it
// runs, and its CPU time over its run time is well under an unlimited
// run's. Every result records the limit, the queue's default when the job
// asked for none, and the CPU time used.
func TestCPULimit(t *testing.T) {
	queue := "cpu-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.WarmSandboxes = 1
	cfg.DefaultLimits.CPUs, cfg.MaxLimits.CPUs = 1, jobs.HostCPUs()
	x := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	waitWorkerMetric(t, x.Worker, "sandq_warm_sandboxes_ready", 1)
	run := func(lim jobs.LimitRequest) *jobs.Result {
		t.Helper()
		return x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "busy.py", busyLoop), Limits: lim}, 3*time.Minute)
	}
	quarter := 0.25
	// Another memory limit than the default shape's: a cold sandbox.
	coldMem := int64(1 << 30)

	w := watchQuotas(t, x)
	warm := run(jobs.LimitRequest{CPUs: &quarter})
	quotas := w.stop()
	t.Logf("CPU quotas seen in the worker's sandbox cgroups: %v", quotas)
	if warm.Timings.StartMode != jobs.StartWarm {
		t.Fatalf("the limited job started %s, want warm", warm.Timings.StartMode)
	}
	if !quotas["25000"] {
		t.Errorf("no sandbox cgroup had the job's quota of 25000us per 100000us while it ran: %v", quotas)
	}
	warmShare := cpuShare(t, warm, quarter)

	cold := run(jobs.LimitRequest{CPUs: &quarter, MemoryBytes: coldMem})
	if cold.Timings.StartMode != jobs.StartCold {
		t.Fatalf("the job with its own memory limit started %s, want cold", cold.Timings.StartMode)
	}
	coldShare := cpuShare(t, cold, quarter)

	// The control: as many CPUs as the host has, more than one busy
	// thread can use.
	all := jobs.HostCPUs()
	control := run(jobs.LimitRequest{CPUs: &all, MemoryBytes: coldMem})
	controlShare := cpuShare(t, control, all)

	if warmShare >= 0.45 || coldShare >= 0.45 {
		t.Errorf("with --cpus 0.25 the busy loop got %.2f (warm) and %.2f (cold) of a core, want under 0.45", warmShare, coldShare)
	}
	if controlShare <= 0.6 {
		t.Errorf("without a CPU limit below the host's the busy loop got %.2f of a core, want over 0.6", controlShare)
	}

	// No --cpus: the queue's default, recorded.
	def := x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "quick.py", "print('hi')\n")}, 3*time.Minute)
	wantStatus(t, def, jobs.StatusSucceeded)
	if def.Limits.CPUs != 1 || def.CPUSeconds == nil || *def.CPUSeconds <= 0 {
		t.Errorf("a job asking for no CPU limit: limits.cpus %v, cpu_seconds %v; want the default 1 and some CPU time", def.Limits.CPUs, def.CPUSeconds)
	}
}

// A python job restored from a snapshot pool's sandbox, restored before
// the job came under the queue's default, runs under its own --cpus 0.25.
func TestCPULimitRestored(t *testing.T) {
	queue := "cpu-snapshot-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.Snapshots = true
	cfg.Worker.SnapshotPool = 1
	x := startSnapshotWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	deadline := time.Now().Add(time.Minute)
	for x.SnapshotPoolReady() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no restored sandbox ready after a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	quarter := 0.25
	r := x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "busy.py", busyLoop), Limits: jobs.LimitRequest{CPUs: &quarter}}, 3*time.Minute)
	if r.Timings.StartMode != jobs.StartRestored {
		t.Fatalf("the job started %s, want restored", r.Timings.StartMode)
	}
	if share := cpuShare(t, r, quarter); share >= 0.45 {
		t.Errorf("restored with --cpus 0.25 the busy loop got %.2f of a core, want under 0.45", share)
	}
	x.Stop()
	if ids, err := x.Runner.Containers(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("containers after the worker stopped: %v %v", ids, err)
	}
}
