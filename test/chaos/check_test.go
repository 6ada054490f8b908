package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/hibiken/asynq"
	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv/multihost"
	"github.com/sandq/sandq/jobs"
)

// The table of scenarios, printed and written at the end.
type row struct {
	n       int // the scenario's number, its place in the table
	name    string
	pass    bool
	took    time.Duration
	figures []string
}

var table struct {
	mu   sync.Mutex
	rows []row
}

const reportPath = "/tmp/sandq-chaos.txt"

func report(took time.Duration) {
	table.mu.Lock()
	defer table.mu.Unlock()
	if len(table.rows) == 0 {
		return
	}
	sort.SliceStable(table.rows, func(i, j int) bool { return table.rows[i].n < table.rows[j].n })
	var b strings.Builder
	mode := "CI subset (SANDQ_CHAOS_FULL=1, `make chaos`, runs the full sizes)"
	if env.full {
		mode = "full sizes (SANDQ_CHAOS_FULL=1)"
	}
	passed := 0
	for _, r := range table.rows {
		if r.pass {
			passed++
		}
	}
	fmt.Fprintf(&b, "sandq chaos suite, %s: %d of %d scenarios passed in %s (%s)\n\n", mode, passed, len(table.rows), took.Round(time.Second), time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "%-4s %-46s %-6s %8s\n", "#", "scenario", "result", "time")
	for _, r := range table.rows {
		res := "PASS"
		if !r.pass {
			res = "FAIL"
		}
		fmt.Fprintf(&b, "%-4d %-46s %-6s %8s\n", r.n, r.name, res, r.took.Round(time.Second))
		for _, f := range r.figures {
			fmt.Fprintf(&b, "       - %s\n", f)
		}
	}
	fmt.Print("\n" + b.String())
	if err := os.WriteFile(reportPath, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "writing %s: %v\n", reportPath, err)
	}
}

// scenario is one row of the table: the jobs it submitted, the workers it
// ran, and the figures it checked.
type scenario struct {
	t       *testing.T
	name    string
	start   time.Time
	mu      sync.Mutex
	jobs    []*tracked
	workers []*worker
	figs    []string
	checked bool // checkResults has run
	// ifaces are host-side veths seen in our workers' leases, with the
	// worker they belong to.
	ifaces map[string]string
	disk0  int64
	mem0   int64
}

// tracked is a job the scenario expects to end with one of want.
type tracked struct {
	id      string
	queue   string
	webhook bool
	want    []jobs.Status
	res     *jobs.Result
}

func newScenario(t *testing.T, n int, name string) *scenario {
	sc := &scenario{t: t, name: name, start: time.Now(), ifaces: map[string]string{}, disk0: freeDisk(t), mem0: memAvailable()}
	t.Cleanup(func() {
		table.mu.Lock()
		defer table.mu.Unlock()
		sc.mu.Lock()
		defer sc.mu.Unlock()
		table.rows = append(table.rows, row{n: n, name: name, pass: !t.Failed(), took: time.Since(sc.start), figures: sc.figs})
	})
	return sc
}

// figure records a figure the scenario checked, for the table.
func (sc *scenario) figure(format string, args ...any) {
	sc.t.Helper()
	sc.figureT(sc.t, format, args...)
}

// figureT is figure for a subtest's t.
func (sc *scenario) figureT(t *testing.T, format string, args ...any) {
	t.Helper()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.figs = append(sc.figs, fmt.Sprintf(format, args...))
	t.Logf(format, args...)
}

func (sc *scenario) worker(label string, o workerOpts) *worker {
	w := startWorker(sc.t, label, o)
	sc.mu.Lock()
	sc.workers = append(sc.workers, w)
	sc.mu.Unlock()
	return w
}

// submit enqueues a job and tracks it; it must end with one of want.
func (sc *scenario) submit(c *jobs.Client, sub jobs.Submission, want ...jobs.Status) *tracked {
	sc.t.Helper()
	return sc.submitT(sc.t, c, sub, want...)
}

// submitT is submit for a subtest's t.
func (sc *scenario) submitT(t *testing.T, c *jobs.Client, sub jobs.Submission, want ...jobs.Status) *tracked {
	t.Helper()
	enq, err := c.Enqueue(context.Background(), sub)
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if len(want) == 0 {
		want = []jobs.Status{jobs.StatusSucceeded}
	}
	j := &tracked{id: enq.ID, queue: enq.Queue, webhook: sub.Webhook != "", want: want}
	sc.mu.Lock()
	sc.jobs = append(sc.jobs, j)
	sc.mu.Unlock()
	return j
}

// result waits until the job is done and returns its result: the one the
// job's task holds (never the stand-in a client shows for a task archived
// without one).
func (sc *scenario) result(j *tracked, within time.Duration) *jobs.Result {
	sc.t.Helper()
	return resultOf(sc.t, j, within)
}

// resultOf is result for a subtest's t.
func resultOf(t *testing.T, j *tracked, within time.Duration) *jobs.Result {
	t.Helper()
	if j.res != nil {
		return j.res
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: env.stack.RedisAddr})
	defer insp.Close()
	r, err := multihost.WaitResult(insp, j.queue, j.id, within)
	if err != nil {
		t.Fatal(err)
	}
	j.res = r
	return r
}

// checkResults waits for every tracked job and checks the invariants of
// its end: one result, a wanted status, and for jobs with a webhook,
// deliveries that all carry the one webhook-id msg_<id> and the result's
// status. It returns a summary for the table.
func (sc *scenario) checkResults(within time.Duration) {
	t := sc.t
	t.Helper()
	if sc.checked {
		return
	}
	sc.checked = true
	statuses := map[jobs.Status]int{}
	hooked, ids, deliveries, maxAttempt, reruns := 0, 0, 0, 0, 0
	for _, j := range sc.jobs {
		r := sc.result(j, within)
		if !statusIn(r.Status, j.want) {
			t.Errorf("job %s ended %s (%s), want one of %v", j.id, r.Status, r.Reason, j.want)
		}
		statuses[r.Status]++
		maxAttempt = max(maxAttempt, r.Attempt)
		if r.Attempt > 1 {
			reruns++
		}
	}
	for _, j := range sc.jobs {
		if !j.webhook {
			continue
		}
		hooked++
		n, nd, err := env.receiver.Check(j.id, j.res.Status, 2*time.Minute)
		if err != nil {
			t.Error(err)
		}
		ids += n
		deliveries += nd
	}
	if bad := env.receiver.Refused(); len(bad) > 0 {
		t.Errorf("receiver refused deliveries: %v", bad)
	}
	var st []string
	for s, n := range statuses {
		st = append(st, fmt.Sprintf("%d %s", n, s))
	}
	sort.Strings(st)
	if len(sc.jobs) == 0 {
		return
	}
	sc.figure("jobs %d, each with one result: %s; highest attempt %d, %d ran more than once", len(sc.jobs), strings.Join(st, ", "), maxAttempt, reruns)
	if hooked > 0 {
		sc.figure("webhooks: %d jobs, %d distinct webhook-ids (one each), %d deliveries, all verified", hooked, ids, deliveries)
	}
}

func statusIn(s jobs.Status, set []jobs.Status) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// leftovers is what sandboxes of one worker left on the host.
type leftovers struct {
	containers, mounts, sandboxDirs, netns, leases, ifaces, rules []string
}

func (l leftovers) count() int {
	return len(l.containers) + len(l.mounts) + len(l.sandboxDirs) + len(l.netns) + len(l.leases) + len(l.ifaces) + len(l.rules)
}

func (l leftovers) String() string {
	return fmt.Sprintf("containers %d, mounts %d, sandbox dirs %d, netns %d, leases %d, veths %d, nft rules %d",
		len(l.containers), len(l.mounts), len(l.sandboxDirs), len(l.netns), len(l.leases), len(l.ifaces), len(l.rules))
}

// lease is the part of a job network's lease file the checks read.
type lease struct {
	Worker  string `json:"worker"`
	Sandbox string `json:"sandbox"`
	Netns   string `json:"netns"`
	HostIf  string `json:"host_if"`
}

const leaseDir = "/run/sandq/net"

// leasesOf lists the lease files of a worker.
func leasesOf(id string) (files []string, ls []lease) {
	all, _ := filepath.Glob(filepath.Join(leaseDir, "*.lease"))
	for _, f := range all {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var l lease
		if json.Unmarshal(b, &l) == nil && l.Worker == id {
			files = append(files, f)
			ls = append(ls, l)
		}
	}
	return files, ls
}

// noteNetworks remembers the veths in our workers' leases, so that a veth
// left after its lease is gone is still found.
func (sc *scenario) noteNetworks() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, w := range sc.workers {
		_, ls := leasesOf(w.id)
		for _, l := range ls {
			sc.ifaces[l.HostIf] = w.id
		}
	}
}

// leftoversOf lists what a worker's sandboxes hold on the host now. For a
// live worker, its runsc root's own mount is not counted; for a gone one,
// everything under its directory is.
func (sc *scenario) leftoversOf(w *worker) leftovers {
	t := sc.t
	t.Helper()
	var l leftovers
	list, err := containers(w.runscRoot())
	if err != nil {
		t.Error(err)
	}
	for _, c := range list {
		l.containers = append(l.containers, c.ID+" ("+c.Status+")")
	}
	dir := filepath.Join(w.stateDir, "workers", w.id)
	mounts, err := runsc.MountsUnder(dir)
	if err != nil {
		t.Error(err)
	}
	for _, m := range mounts {
		if !w.alive() || strings.Contains(m, "/sandboxes/") {
			l.mounts = append(l.mounts, m)
		}
	}
	l.sandboxDirs, _ = filepath.Glob(filepath.Join(dir, "sandboxes", "*"))
	l.netns, _ = filepath.Glob("/var/run/netns/sandq-" + w.id + "-*")
	var ls []lease
	l.leases, ls = leasesOf(w.id)
	sc.mu.Lock()
	for _, x := range ls {
		sc.ifaces[x.HostIf] = w.id
	}
	for _, ns := range l.netns {
		// sandq-<worker>-<short>: its host side is sq<short>h.
		short := strings.TrimPrefix(filepath.Base(ns), "sandq-"+w.id+"-")
		sc.ifaces["sq"+short+"h"] = w.id
	}
	for ifc, owner := range sc.ifaces {
		if _, err := os.Lstat("/sys/class/net/" + ifc); err == nil && owner == w.id {
			l.ifaces = append(l.ifaces, ifc)
		}
	}
	sc.mu.Unlock()
	l.rules, err = nftRules("sandq:" + w.id + ":")
	if err != nil {
		t.Error(err)
	}
	return l
}

// nftRules lists the user data of the rules in table inet sandq that start
// with prefix.
func nftRules(prefix string) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	return multihost.RulesTagged(c, func(tag string) bool { return strings.HasPrefix(tag, prefix) })
}

// waitIdle waits until none of the live workers has a container.
func (sc *scenario) waitIdle(within time.Duration) {
	deadline := time.Now().Add(within)
	for _, w := range sc.workers {
		if !w.alive() {
			continue
		}
		for {
			list, err := containers(w.runscRoot())
			if err != nil || len(list) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// finish checks the invariants at the end of a scenario: the jobs' results
// and webhooks; nothing of any sandbox left by the live workers; then
// stops the workers (SIGTERM) and checks that nothing at all of them is
// left (their directories are removed); host disk and memory flat.
func (sc *scenario) finish(within time.Duration) {
	t := sc.t
	t.Helper()
	sc.checkResults(within)
	sc.waitIdle(time.Minute)
	var live leftovers
	rss := int64(0)
	for _, w := range sc.workers {
		if !w.alive() {
			continue
		}
		rss = max(rss, w.rssBytes())
		l := sc.leftoversOf(w)
		if l.count() > 0 {
			t.Errorf("worker %s (idle) left: %+v", w.label, l)
		}
		live.containers = append(live.containers, l.containers...)
	}
	if rss > 1<<30 {
		t.Errorf("a worker's resident memory is %s", human(rss))
	}
	for _, w := range sc.workers {
		if w.alive() && !w.stop(t, 2*time.Minute) {
			t.Errorf("worker %s did not stop on SIGTERM", w.label)
		}
	}
	total := leftovers{}
	dirs := map[string]bool{}
	for _, w := range sc.workers {
		l := sc.leftoversOf(w)
		if l.count() > 0 {
			t.Errorf("worker %s (stopped) left: %+v", w.label, l)
		}
		total.containers = append(total.containers, l.containers...)
		total.mounts = append(total.mounts, l.mounts...)
		total.sandboxDirs = append(total.sandboxDirs, l.sandboxDirs...)
		total.netns = append(total.netns, l.netns...)
		total.leases = append(total.leases, l.leases...)
		total.ifaces = append(total.ifaces, l.ifaces...)
		total.rules = append(total.rules, l.rules...)
		dirs[w.stateDir] = true
	}
	var tempDirs []string
	for d := range dirs {
		left, _ := filepath.Glob(filepath.Join(d, "workers", "*"))
		tempDirs = append(tempDirs, left...)
	}
	if len(tempDirs) > 0 {
		t.Errorf("worker directories left after every worker stopped: %v", tempDirs)
	}
	sc.figure("leaks after the workers stopped: %s, worker dirs %d (largest worker RSS %s)", total, len(tempDirs), human(rss))
	sc.checkHost(dirs)
}

// checkHost checks the disk the scenario's state directories still take
// (their workers are gone: nothing but the empty directories) and compares
// the host's free disk (of the state directories' file system) and
// available memory with the scenario's start. Other tests run on this
// machine, so the host bounds are loose; the leak checks and the state
// directories' own usage are the precise ones.
func (sc *scenario) checkHost(stateDirs map[string]bool) {
	t := sc.t
	t.Helper()
	var used int64
	for d := range stateDirs {
		used += dirBytes(d)
	}
	if used > 1<<20 {
		t.Errorf("the stopped workers' state directories still take %s", human(used))
	}
	disk, mem := freeDisk(t), memAvailable()
	dd, dm := sc.disk0-disk, sc.mem0-mem
	if dd > 4<<30 {
		t.Errorf("host free disk fell by %s during the scenario", human(dd))
	}
	if dm > 4<<30 {
		t.Errorf("host available memory fell by %s during the scenario", human(dm))
	}
	sc.figure("disk: state dirs %s after; host free disk %s (change %s), available memory %s (change %s)", human(used), human(disk), signed(-dd), human(mem), signed(-dm))
}

// human is a byte count for the table, to one decimal.
func human(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult {
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.mult), u.suffix)
		}
	}
	return fmt.Sprintf("%dB", n)
}

func signed(n int64) string {
	if n < 0 {
		return "-" + human(-n)
	}
	return "+" + human(n)
}

func freeDisk(t *testing.T) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(env.dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

func memAvailable() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			var kb int64
			fmt.Sscan(v, &kb)
			return kb << 10
		}
	}
	return 0
}
