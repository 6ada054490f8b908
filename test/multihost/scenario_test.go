package multihost

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/testenv/multihost"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// scenario is one scenario's hosts, jobs and figures.
type scenario struct {
	t     *testing.T
	name  string
	queue string
	start time.Time
	hosts []*multihost.Host
	jobs  []*tracked
	figs  []string
	// cfg names the Redis and S3 the scenario's hosts and producers use
	// (the suite's by default); store reaches that S3.
	cfg   jobs.Config
	store *storage.Store
}

type tracked struct {
	id, queue, tag string
	res            *jobs.Result
}

func newScenario(t *testing.T, n int, name, queue string) *scenario {
	sc := &scenario{t: t, name: name, queue: queue, start: time.Now(), store: env.store,
		cfg: jobs.Config{RedisAddr: env.stack.RedisAddr, Storage: storageConfig()}}
	t.Cleanup(func() {
		res := "PASS"
		if t.Failed() {
			res = "FAIL"
		}
		row := fmt.Sprintf("%d. %s: %s in %s", n, name, res, time.Since(sc.start).Round(time.Second))
		for _, f := range sc.figs {
			row += "\n     - " + f
		}
		table.mu.Lock()
		table.rows = append(table.rows, row)
		table.mu.Unlock()
	})
	return sc
}

func (sc *scenario) figure(format string, args ...any) {
	sc.t.Helper()
	sc.figs = append(sc.figs, fmt.Sprintf(format, args...))
	sc.t.Logf(format, args...)
}

// host makes and starts a host serving queues (name=weight,...), closed
// with the test.
func (sc *scenario) host(name, queues string) *multihost.Host {
	t := sc.t
	t.Helper()
	dir := filepath.Join(env.dir, sc.queue, name)
	egress := filepath.Join(dir, "egress.json")
	h, err := env.bridge.NewHost(context.Background(), multihost.Config{
		Name: name, Dir: dir, Bin: env.bin, Env: workerEnv(sc.cfg),
		Args: []string{"--queues", queues, "--concurrency", "2", "--shutdown-grace", "10s", "--metrics-addr", "",
			"--image-dir", env.image.Dir, "--image", env.image.Name, "--egress-config", egress, "--webhook-config", env.hooks},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Each host its own pool (by its number on the bridge); every queue
	// it serves may have the group.
	var qs []string
	for _, q := range strings.Split(queues, ",") {
		name, _, _ := strings.Cut(q, "=")
		qs = append(qs, fmt.Sprintf(`%q: {"max": [%q], "default": [%q]}`, name, netGroup, netGroup))
	}
	pol := fmt.Sprintf(`{"pool": "10.201.%d.0/24", "groups": {%q: ["*.example.com"]}, "queues": {%s}}`, h.Index, netGroup, strings.Join(qs, ", "))
	if err := os.WriteFile(egress, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("closing host %s: %v", name, err)
		}
	})
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	sc.hosts = append(sc.hosts, h)
	return h
}

// producer is a client of queue q, closed with the test.
func (sc *scenario) producer(q string) *jobs.Client {
	t := sc.t
	t.Helper()
	cfg := sc.cfg
	cfg.Queue, cfg.MaxRetry, cfg.PollInterval = q, 8, 200*time.Millisecond
	c, err := jobs.NewClient(cfg.WithDefaults(), sc.store, env.logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// submit enqueues n jobs that sleep for sleep seconds and write their
// number; every fourth has a network of its own.
func (sc *scenario) submit(c *jobs.Client, n int, sleep float64) []*tracked {
	return sc.submitTo(c, sc.queue, n, sleep)
}

// submitTo is submit for a client of queue q.
func (sc *scenario) submitTo(c *jobs.Client, q string, n int, sleep float64) []*tracked {
	t := sc.t
	t.Helper()
	var out []*tracked
	for i := range n {
		tag := fmt.Sprintf("%s-%d", q, len(sc.jobs))
		enq, err := c.Enqueue(context.Background(), sc.submission(tag, i, sleep))
		if err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		j := &tracked{id: enq.ID, queue: enq.Queue, tag: tag}
		sc.jobs = append(sc.jobs, j)
		out = append(out, j)
	}
	return out
}

// submission is job number i of a scenario: it sleeps, then writes its
// number to an output; every fourth has a network.
func (sc *scenario) submission(tag string, i int, sleep float64) jobs.Submission {
	body := fmt.Sprintf("sleep %g; echo $1 > $OUTPUT_DIR/n\n", sleep)
	sub := jobs.Submission{
		Script: jobs.File{Name: "job.sh", Size: int64(len(body)), Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }},
		Args:   []string{strconv.Itoa(i)}, Env: map[string]string{tagVar: tag}, Webhook: env.receiver.URL(),
		Limits: jobs.LimitRequest{TimeoutSeconds: 300, MemoryBytes: 128 << 20, DiskBytes: 64 << 20},
	}
	if i%4 == 3 {
		sub.Network = []string{netGroup}
	}
	return sub
}

// result waits for the result the job's task holds.
func result(t *testing.T, insp *asynq.Inspector, j *tracked, within time.Duration) *jobs.Result {
	t.Helper()
	if j.res != nil {
		return j.res
	}
	r, err := multihost.WaitResult(insp, j.queue, j.id, within)
	if err != nil {
		t.Fatal(err)
	}
	j.res = r
	return r
}

// inspector reaches the scenario's Redis, closed with the test.
func (sc *scenario) inspector() *asynq.Inspector {
	t := sc.t
	t.Helper()
	conn, err := sc.cfg.RedisConn()
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(conn)
	t.Cleanup(func() { insp.Close() })
	return insp
}

// hostOf is the host that wrote a result (its worker name is
// hostname:pid).
func hostOf(r *jobs.Result) string { h, _, _ := strings.Cut(r.Worker, ":"); return h }

// finish checks the invariants: every job succeeded with one result whose
// outputs download, one webhook-id per job; nothing left on the hosts
// that run (idle), nor of their workers once stopped. It returns the jobs
// per host.
func (sc *scenario) finish(within time.Duration) map[string]int {
	t := sc.t
	t.Helper()
	insp := sc.inspector()
	per := map[string]int{}
	reruns := 0
	for _, j := range sc.jobs {
		r := result(t, insp, j, within)
		if r.Status != jobs.StatusSucceeded {
			t.Errorf("job %s ended %s (%s)", j.id, r.Status, r.Reason)
		}
		per[hostOf(r)]++
		if r.Attempt > 1 {
			reruns++
		}
	}
	deliveries := 0
	for _, j := range sc.jobs {
		_, n, err := env.receiver.Check(j.id, j.res.Status, 2*time.Minute)
		if err != nil {
			t.Error(err)
		}
		deliveries += n
	}
	if bad := env.receiver.Refused(); len(bad) > 0 {
		t.Errorf("refused deliveries: %v", bad)
	}
	sc.figure("%d jobs, each one result (succeeded) and one webhook-id (%d deliveries); %d ran more than once; per host %v", len(sc.jobs), deliveries, reruns, per)
	sc.checkLeftovers()
	return per
}

// checkLeftovers checks the running hosts, idle, then stops them and
// checks again.
func (sc *scenario) checkLeftovers() {
	t := sc.t
	t.Helper()
	ctx := context.Background()
	var total multihost.Leftovers
	for _, h := range sc.hosts {
		if !h.Alive() {
			continue
		}
		var l multihost.Leftovers
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
			var err error
			if l, err = h.Leftovers(ctx); err != nil {
				t.Error(err)
			}
			if l.Count() == 0 || time.Now().After(deadline) {
				break
			}
		}
		if l.Count() > 0 {
			t.Errorf("host %s (idle) left %s: %+v", h.Name, l, l)
		}
		if !h.Stop(2 * time.Minute) {
			t.Errorf("host %s did not stop on SIGTERM", h.Name)
		}
		l, err := h.Leftovers(ctx)
		if err != nil {
			t.Error(err)
		}
		if l.Count() > 0 {
			t.Errorf("host %s (stopped) left %s: %+v", h.Name, l, l)
		}
		total.Containers = append(total.Containers, l.Containers...)
		total.WorkerDirs = append(total.WorkerDirs, l.WorkerDirs...)
		total.Cgroups = append(total.Cgroups, l.Cgroups...)
		total.Veths = append(total.Veths, l.Veths...)
		total.Rules = append(total.Rules, l.Rules...)
	}
	sc.figure("surviving hosts, idle and then stopped, left nothing: %s", total)
}

// resultsWithin bounds the wait for a scenario's results: at full size
// the scenarios' 300-job queues, run side by side on the machine, take
// many minutes to drain.
func resultsWithin() time.Duration {
	return time.Duration(ciOrFull(10, 30)) * time.Minute
}

func ciOrFull(ci, full int) int {
	if env.full {
		return full
	}
	return ci
}

// 1. Three hosts drain the queue; the work spreads across all three.
func TestThreeHostsDrain(t *testing.T) {
	sc := newScenario(t, 1, "3 hosts drain the queue", "mh-drain")
	n := ciOrFull(45, 300)
	for i := 1; i <= 3; i++ {
		sc.host(fmt.Sprintf("h%d", i), sc.queue)
	}
	c := sc.producer(sc.queue)
	began := time.Now()
	sc.submit(c, n, 1)
	per := sc.finish(resultsWithin())
	took := time.Since(began)
	for _, h := range sc.hosts {
		if per[h.Name] < n/10 {
			t.Errorf("host %s ran %d of %d jobs, want at least %d", h.Name, per[h.Name], n, n/10)
		}
	}
	sc.figure("%d jobs (1 s each, every 4th networked) drained by 3 hosts x concurrency 2 in %s: %v", n, took.Round(time.Second), per)
}

// runningOn waits until host h runs at least n containers of the
// scenario's jobs and returns their tags.
func runningOn(t *testing.T, h *multihost.Host, n int, within time.Duration) []string {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		list, err := h.Containers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var tags []string
		for _, c := range list {
			if c.Status == "running" {
				if tag := c.Env(tagVar); tag != "" {
					tags = append(tags, tag)
				}
			}
		}
		if len(tags) >= n {
			return tags
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s runs %d jobs after %s, want %d", h.Name, len(tags), within, n)
		}
	}
}

// byTag are the scenario's jobs with the given tags.
func (sc *scenario) byTag(tags []string) []*tracked {
	var out []*tracked
	for _, j := range sc.jobs {
		for _, tag := range tags {
			if j.tag == tag {
				out = append(out, j)
			}
		}
	}
	return out
}

// 2. A host dies (every process at once) with jobs running on it; they
// finish on the others once asynq's lease on them lapses (30 s) and a
// recoverer (every minute, for leases expired 30 s ago) requeues them.
func TestHostKilledMidRun(t *testing.T) {
	t.Parallel() // mostly waiting for leases to lapse
	sc := newScenario(t, 2, "a host killed mid-run", "mh-kill")
	n := ciOrFull(30, 300)
	h1 := sc.host("h1", sc.queue)
	sc.host("h2", sc.queue)
	sc.host("h3", sc.queue)
	c := sc.producer(sc.queue)
	insp := sc.inspector()
	began := time.Now()
	sc.submit(c, n, 5)
	tags := runningOn(t, h1, 2, 3*time.Minute)
	time.Sleep(time.Second)
	if err := h1.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	left, err := h1.Leftovers(context.Background())
	if err != nil {
		t.Error(err)
	}
	if len(left.Containers) < 2 || len(left.WorkerDirs) != 1 {
		t.Errorf("the killed host left %s; want its %d sandboxes' state and its worker's directory", left, len(tags))
	}
	sc.figure("killed host h1 (every process at once) with %d jobs running; it left (until its reboot) %s", len(tags), left)
	var lastStart, lastDone time.Duration
	for _, j := range sc.byTag(tags) {
		r := result(t, insp, j, resultsWithin())
		if r.Status != jobs.StatusSucceeded || r.Attempt < 2 || hostOf(r) == h1.Name {
			t.Errorf("job %s (running on h1 when it died): %s (%s), attempt %d on %s; want succeeded on a later attempt elsewhere", j.id, r.Status, r.Reason, r.Attempt, r.Worker)
		}
		lastStart = max(lastStart, r.StartedAt.Sub(killedAt))
		lastDone = max(lastDone, r.FinishedAt.Sub(killedAt))
	}
	sc.figure("recovery: the dead host's jobs started again on the others %s after the kill, done %s after (asynq lease 30 s + recoverer every 1 min for leases expired 30 s)",
		lastStart.Round(time.Second), lastDone.Round(time.Second))
	per := sc.finish(resultsWithin())
	sc.figure("%d jobs (5 s each) in %s; per host %v", n, time.Since(began).Round(time.Second), per)
}

// 3. A host is cut off from Redis and S3 for 60 s: asynq's lease on its
// running jobs lapses, and the worker kills their sandboxes; the jobs run
// again elsewhere, never in two sandboxes at once; restored, the host
// serves again.
func TestHostCutOff(t *testing.T) {
	t.Parallel() // mostly waiting for leases to lapse
	sc := newScenario(t, 3, "a host cut off from Redis and S3 for 60 s", "mh-cut")
	own := sc.queue + "-h1"
	h1 := sc.host("h1", sc.queue+"=1,"+own+"=1")
	h2 := sc.host("h2", sc.queue)
	h3 := sc.host("h3", sc.queue)
	w := multihost.Watch(tagVar, h1, h2, h3)
	defer w.Finish()
	c := sc.producer(sc.queue)
	insp := sc.inspector()
	// Long enough that a sandbox still there 45 s after the cut was not
	// killed.
	sc.submit(c, 6, 60)
	tags := runningOn(t, h1, 2, 3*time.Minute)
	time.Sleep(time.Second)
	if err := h1.Cut(); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	if extra := ciOrFull(0, 300); extra > 0 {
		sc.submit(c, extra, 1)
	}
	// The cut host's sandboxes must go once their lease lapses (30 s after
	// its last renewal), and before any other host may take their jobs
	// (asynq's recovery takes leases lapsed 30 s: 60 s after the last).
	for deadline := cutAt.Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		list, err := h1.Containers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cut host still has %d sandboxes %s after the cut (asynq's lease is 30 s)", len(list), time.Since(cutAt).Round(time.Second))
		}
	}
	var killedAfter time.Duration
	for _, tag := range tags {
		if ss := w.Of(tag); len(ss) > 0 {
			killedAfter = max(killedAfter, ss[0].Last.Sub(cutAt))
		}
	}
	sc.figure("cut host h1 with %d jobs running: its sandboxes were gone %s after the cut (last seen)", len(tags), killedAfter.Round(time.Second))
	time.Sleep(time.Until(cutAt.Add(60 * time.Second)))
	if err := h1.Restore(); err != nil {
		t.Fatal(err)
	}
	restoredAt := time.Now()
	var lastStart time.Duration
	for _, j := range sc.byTag(tags) {
		r := result(t, insp, j, resultsWithin())
		if r.Status != jobs.StatusSucceeded || r.Attempt < 2 {
			t.Errorf("job %s (running on h1 when cut): %s (%s), attempt %d on %s; want succeeded on a later attempt", j.id, r.Status, r.Reason, r.Attempt, r.Worker)
		}
		lastStart = max(lastStart, r.StartedAt.Sub(cutAt))
	}
	sc.figure("the cut host's jobs started again %s after the cut", lastStart.Round(time.Second))
	submitted := time.Now()
	after := sc.submitTo(sc.producer(own), own, 4, 1)
	for _, j := range after {
		if r := result(t, insp, j, 3*time.Minute); hostOf(r) != h1.Name {
			t.Errorf("job %s of h1's own queue ran on %s", j.id, r.Worker)
		}
	}
	sc.figure("restored at +60 s; %s after, h1 ran its own queue's %d jobs within %s of their submission", submitted.Sub(restoredAt).Round(time.Second), len(after), time.Since(submitted).Round(time.Second))
	per := sc.finish(resultsWithin())
	w.Finish()
	if ov := w.Overlaps(); len(ov) > 0 {
		t.Errorf("a job ran in two sandboxes at once: %v", ov)
	}
	sc.figure("no job in two sandboxes at once (%d polls of the 3 hosts' runsc roots); per host %v", w.Polls(), per)
}
