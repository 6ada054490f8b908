package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
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
	t.Logf("job %s (%s, %v CPUs): %vs of CPU in %vs: %.2f of a core; stdout %q", r.ID, r.Timings.StartMode, cpus, *r.CPUSeconds, wall, share, r.Stdout.Tail)
	return share
}

// cgroupWatch reads the CPU controller of a runner's sandbox cgroups every
// 50ms until stopped: each one's quota (microseconds per 100ms period, -1
// or "max" for none) and the most periods in which the kernel held it
// back at its quota (nr_throttled in cpu.stat) seen before it was removed.
type cgroupWatch struct {
	mu      sync.Mutex
	seen    map[string]cgroupCPU
	done    chan struct{}
	stopped sync.WaitGroup
}

type cgroupCPU struct {
	quota     string
	throttled int
}

func watchCgroups(t *testing.T, x *sandqtest.Worker) *cgroupWatch {
	t.Helper()
	v1, v2, err := runsc.CgroupRoots()
	if err != nil {
		t.Fatal(err)
	}
	root, quotaFile := v2, "cpu.max"
	if r, ok := v1["cpu"]; ok {
		root, quotaFile = r, "cpu.cfs_quota_us"
	}
	pattern := filepath.Join(root, executor.DefaultCgroupParent, x.Runner.WorkerID(), "*")
	w := &cgroupWatch{seen: map[string]cgroupCPU{}, done: make(chan struct{})}
	w.stopped.Add(1)
	go func() {
		defer w.stopped.Done()
		for {
			dirs, _ := filepath.Glob(pattern)
			for _, d := range dirs {
				q, err1 := os.ReadFile(filepath.Join(d, quotaFile))
				st, err2 := os.ReadFile(filepath.Join(d, "cpu.stat"))
				if err1 != nil || err2 != nil {
					continue // removed meanwhile
				}
				c := cgroupCPU{quota: strings.Fields(string(q) + " ?")[0]}
				for _, line := range strings.Split(string(st), "\n") {
					if v, ok := strings.CutPrefix(line, "nr_throttled "); ok {
						c.throttled, _ = strconv.Atoi(strings.TrimSpace(v))
					}
				}
				w.mu.Lock()
				if prev, ok := w.seen[d]; !ok || c.throttled >= prev.throttled {
					w.seen[d] = c
				}
				w.mu.Unlock()
			}
			select {
			case <-w.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

// stop ends the watch and returns, for each quota seen, the most periods
// throttled of a cgroup with it.
func (w *cgroupWatch) stop() map[string]int {
	close(w.done)
	w.stopped.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	byQuota := map[string]int{}
	for _, c := range w.seen {
		byQuota[c.quota] = max(byQuota[c.quota], c.throttled)
	}
	return byQuota
}

// A busy loop with --cpus 0.25 gets at most about a quarter of a core, in
// a warm sandbox (created before its job, under the queue's default of one
// CPU) and in a cold one: its sandbox's cgroup has the job's quota while
// it runs, the kernel holds it back at that quota, and its CPU time over
// its run time stays under 0.45. The same loop with as many CPUs as the
// host has is never held back. Every result records the limit (the
// queue's default when the job asked for none) and the CPU time used.
//
// The comparison is the kernel's count of periods at the quota, not the
// unlimited loop's share of a core: on a busy host (five test runs on two
// cores) that share falls to a quarter too, the limit having nothing left
// to cut.
func TestCPULimit(t *testing.T) {
	queue := "cpu-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.WarmSandboxes = 1
	cfg.DefaultLimits.CPUs, cfg.MaxLimits.CPUs = 1, jobs.HostCPUs()
	x := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	waitWorkerMetric(t, x.Worker, "sandq_warm_sandboxes_ready", 1)
	run := func(lim jobs.LimitRequest) (*jobs.Result, map[string]int) {
		t.Helper()
		w := watchCgroups(t, x)
		r := x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "busy.py", busyLoop), Limits: lim}, 3*time.Minute)
		seen := w.stop()
		t.Logf("job %s: periods throttled by the CPU quota of the worker's sandbox cgroups: %v", r.ID, seen)
		return r, seen
	}
	// The operator's maximum bites at enqueue, naming the field.
	over := jobs.HostCPUs() + 1
	_, err := x.Client.Enqueue(context.Background(), jobs.Submission{Queue: queue, Script: file(t, "busy.py", busyLoop), Limits: jobs.LimitRequest{CPUs: &over}})
	var fe *jobs.FieldError
	if !errors.As(err, &fe) || fe.Field != "cpus" || !strings.Contains(fe.Msg, "over the maximum") {
		t.Fatalf("enqueue with %v CPUs, over the maximum: %v", over, err)
	}

	quarter := 0.25
	// Another memory limit than the default shape's: a cold sandbox.
	coldMem := int64(1 << 30)

	warm, warmSeen := run(jobs.LimitRequest{CPUs: &quarter})
	if warm.Timings.StartMode != jobs.StartWarm {
		t.Fatalf("the limited job started %s, want warm", warm.Timings.StartMode)
	}
	cold, coldSeen := run(jobs.LimitRequest{CPUs: &quarter, MemoryBytes: coldMem})
	if cold.Timings.StartMode != jobs.StartCold {
		t.Fatalf("the job with its own memory limit started %s, want cold", cold.Timings.StartMode)
	}
	all := jobs.HostCPUs()
	control, controlSeen := run(jobs.LimitRequest{CPUs: &all, MemoryBytes: coldMem})

	for _, c := range []struct {
		r    *jobs.Result
		seen map[string]int
	}{{warm, warmSeen}, {cold, coldSeen}} {
		throttled, ok := c.seen["25000"]
		if !ok {
			t.Errorf("job %s (%s): no sandbox cgroup had its quota of 25000us per 100000us while it ran: %v", c.r.ID, c.r.Timings.StartMode, c.seen)
		} else if throttled == 0 {
			t.Errorf("job %s (%s): its busy loop was never held back at its quota", c.r.ID, c.r.Timings.StartMode)
		}
		if share := cpuShare(t, c.r, quarter); share >= 0.45 {
			t.Errorf("job %s (%s): with --cpus 0.25 the busy loop got %.2f of a core, want under 0.45", c.r.ID, c.r.Timings.StartMode, share)
		}
	}
	controlQuota := strconv.Itoa(int(all * executor.CPUPeriodMicros))
	if throttled, ok := controlSeen[controlQuota]; !ok || throttled != 0 {
		t.Errorf("the loop with %v CPUs: quota %s seen %v, throttled %d periods; want seen, never throttled (all: %v)", all, controlQuota, ok, throttled, controlSeen)
	}
	cpuShare(t, control, all)

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
	w := watchCgroups(t, x)
	r := x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "busy.py", busyLoop), Limits: jobs.LimitRequest{CPUs: &quarter}}, 3*time.Minute)
	seen := w.stop()
	if r.Timings.StartMode != jobs.StartRestored {
		t.Fatalf("the job started %s, want restored", r.Timings.StartMode)
	}
	if throttled, ok := seen["25000"]; !ok || throttled == 0 {
		t.Errorf("the restored job's cgroup: quota 25000us seen %v, throttled %d periods; want seen and held back (all: %v)", ok, throttled, seen)
	}
	if share := cpuShare(t, r, quarter); share >= 0.45 {
		t.Errorf("restored with --cpus 0.25 the busy loop got %.2f of a core, want under 0.45", share)
	}
	x.Stop()
	if ids, err := x.Runner.Containers(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("containers after the worker stopped: %v %v", ids, err)
	}
}
