package chaos

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// script is a job script with body as its content.
func script(name, body string) jobs.File {
	return jobs.File{Name: name, Size: int64(len(body)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	}}
}

// download GETs a link and returns its body; anything but 200 fails.
func download(t *testing.T, url string) []byte {
	t.Helper()
	_, b := testenv.Fetch(t, url)
	return b
}

func inspector(t *testing.T) *asynq.Inspector {
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: env.stack.RedisAddr})
	t.Cleanup(func() { insp.Close() })
	return insp
}

// small are limits that keep many sandboxes within any host's memory
// budget.
var small = jobs.LimitRequest{TimeoutSeconds: 180, MemoryBytes: 256 << 20, DiskBytes: 256 << 20}

// TestWorkerKilledMidJob SIGKILLs a worker while two jobs run (one with a
// network of its own). Its sandboxes, mounts, namespace, veth, firewall
// rule, lease and scratch space stay until a worker starts on the host: the
// new worker sweeps them at start. Once asynq's lease on the jobs expires,
// they run again on the live worker and end with one result and one
// webhook-id each.
func TestWorkerKilledMidJob(t *testing.T) {
	sc := newScenario(t, 1, "worker SIGKILLed mid-job")
	const q = "chaos-kill"
	c := producer(t, q)
	stateDir := filepath.Join(env.dir, "state-kill")
	a := sc.worker("kill-a", workerOpts{queues: q, stateDir: stateDir})
	body := "echo started; sleep 5; echo done > $OUTPUT_DIR/x\n"
	plain := sc.submit(c, jobs.Submission{Script: script("job.sh", body), Webhook: env.receiver.URL(), Limits: small})
	networked := sc.submit(c, jobs.Submission{Script: script("job.sh", body), Webhook: env.receiver.URL(), Limits: small, Network: []string{netGroup}})
	list := waitContainers(t, a.runscRoot(), 2, 2*time.Minute)
	time.Sleep(time.Second) // both scripts are running
	sc.noteNetworks()

	a.kill(t)
	killedAt := time.Now()
	left := sc.leftoversOf(a)
	if len(left.containers) < 2 || len(left.mounts) == 0 || len(left.sandboxDirs) < 2 || len(left.netns) != 1 || len(left.rules) != 2 /* accept + bypass counter */ || len(left.leases) != 1 || len(left.ifaces) != 1 {
		t.Errorf("after the SIGKILL, expected the dead worker's 2 sandboxes (one networked) to be left for sweeping; found %s", left)
	}
	sc.figure("SIGKILLed worker pid %d with %d jobs running; it left %s", a.pid, len(list), left)

	a2 := sc.worker("kill-a2", workerOpts{queues: q, stateDir: stateDir})
	swept := sc.leftoversOf(a)
	if swept.count() > 0 {
		t.Errorf("a new worker on the host did not sweep the dead worker's leftovers: %+v", swept)
	}
	_, dirErr := os.Stat(filepath.Join(stateDir, "workers", a.id))
	if dirErr == nil {
		t.Errorf("the dead worker's directory %s is still there", a.id)
	}
	sc.figure("a new worker (pid %d) swept them at start: %s; dead worker's dir removed: %v", a2.pid, swept, os.IsNotExist(dirErr))

	for _, j := range []*tracked{plain, networked} {
		r := sc.result(j, 5*time.Minute)
		if r.Status != jobs.StatusSucceeded || r.Attempt < 2 || r.Worker != a2.name {
			t.Errorf("job %s: %s (%s) attempt %d on %s; want succeeded on a later attempt on %s", j.id, r.Status, r.Reason, r.Attempt, r.Worker, a2.name)
			continue
		}
		if len(r.Outputs) != 1 || string(download(t, r.Outputs[0].URL)) != "done\n" {
			t.Errorf("job %s: outputs %+v", j.id, r.Outputs)
		}
	}
	sc.figure("both jobs ran again on the live worker, %s after the kill (asynq's 30s lease, then its recoverer), attempts %d and %d",
		time.Since(killedAt).Round(time.Second), plain.res.Attempt, networked.res.Attempt)
	sc.finish(5 * time.Minute)
}

// sighting is a container seen by a watcher.
type sighting struct {
	root, id, tag string
	created       time.Time
	// last is a time at which the container certainly still existed (the
	// start of the last `runsc list` that showed it).
	last time.Time
}

// watcher polls runsc roots and records every container it sees, to tell
// whether two sandboxes of one job ever existed at once.
type watcher struct {
	mu    sync.Mutex
	roots []string
	seen  map[string]*sighting
	polls int
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newWatcher(roots ...string) *watcher {
	w := &watcher{roots: roots, seen: map[string]*sighting{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			w.mu.Lock()
			roots := append([]string(nil), w.roots...)
			w.mu.Unlock()
			for _, root := range roots {
				began := time.Now()
				list, err := containers(root)
				if err != nil {
					continue
				}
				w.mu.Lock()
				for _, c := range list {
					key := root + "/" + c.ID
					s := w.seen[key]
					if s == nil {
						s = &sighting{root: root, id: c.ID, tag: c.Tag, created: c.Created}
						w.seen[key] = s
					}
					if s.tag == "" {
						s.tag = c.Tag
					}
					s.last = began
				}
				w.mu.Unlock()
			}
			w.mu.Lock()
			w.polls++
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *watcher) add(root string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.roots = append(w.roots, root)
}

func (w *watcher) finish() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// of lists the sightings of a tag, oldest first.
func (w *watcher) of(tag string) []*sighting {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*sighting
	for _, s := range w.seen {
		if s.tag == tag {
			out = append(out, s)
		}
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].created.Before(out[i].created) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// overlaps lists pairs of sandboxes of one tag that certainly existed at
// the same time: the later was created before the earlier was last seen.
func overlaps(ss []*sighting) []string {
	var out []string
	for i := range ss {
		for j := i + 1; j < len(ss); j++ {
			if ss[j].created.Before(ss[i].last) {
				out = append(out, fmt.Sprintf("%s (created %s, seen until %s) and %s (created %s)",
					ss[i].id, ss[i].created.Format(time.StampMilli), ss[i].last.Format(time.StampMilli), ss[j].id, ss[j].created.Format(time.StampMilli)))
			}
		}
	}
	return out
}

// TestGracefulStopHandsJobBack sends SIGTERM to a worker with a short
// --shutdown-grace while a long job runs: the worker takes no new job,
// kills the sandbox after the grace, and the job goes back to its queue
// unchanged (attempt not counted) and finishes on another worker; the two
// sandboxes of the job never exist at once.
func TestGracefulStopHandsJobBack(t *testing.T) {
	sc := newScenario(t, 2, "graceful stop (SIGTERM) mid-job")
	const q, qa = "chaos-term", "chaos-term-a"
	c, ca := producer(t, q), producer(t, qa)
	insp := inspector(t)
	grace := 3 * time.Second
	a := sc.worker("term-a", workerOpts{queues: q + "=1," + qa + "=1", grace: grace})
	w := newWatcher(a.runscRoot())
	defer w.finish()
	long := sc.submit(c, jobs.Submission{
		Script: script("long.sh", "echo started; sleep 20; echo done > $OUTPUT_DIR/x\n"),
		Env:    map[string]string{"CHAOS_TAG": "long"}, Webhook: env.receiver.URL(), Limits: small,
	})
	for deadline := time.Now().Add(2 * time.Minute); len(w.of("long")) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the long job's sandbox never started on the first worker")
		}
	}
	time.Sleep(time.Second)
	b := sc.worker("term-b", workerOpts{queues: q})
	w.add(b.runscRoot())

	if err := a.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(a.log(), "stopping: running jobs get the grace period"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not start stopping:\n%s", a.log())
		}
	}
	time.Sleep(300 * time.Millisecond)
	// Only the stopping worker serves qa: the job must wait for another.
	short := sc.submit(ca, jobs.Submission{
		Script: script("short.sh", "echo short > $OUTPUT_DIR/x\n"),
		Env:    map[string]string{"CHAOS_TAG": "short"}, Webhook: env.receiver.URL(), Limits: small,
	})
	select {
	case <-a.Exited():
	case <-time.After(3 * time.Minute):
		t.Fatal("the worker did not exit within 3m of SIGTERM")
	}
	stopped := time.Since(termAt)
	if a.Err() != nil {
		t.Errorf("the stopped worker exited with %v", a.Err())
	}
	if !strings.Contains(a.log(), "grace period over: killing running sandboxes") {
		t.Errorf("the worker's log does not say it killed the running sandbox after the grace")
	}
	info, err := insp.GetTaskInfo(q, long.id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Retried != 0 || len(info.Result) != 0 {
		t.Errorf("after the hand-back the job is %s with %d retries and result %q; want it unchanged", info.State, info.Retried, info.Result)
	}
	sinfo, err := insp.GetTaskInfo(qa, short.id)
	if err != nil {
		t.Fatal(err)
	}
	if sinfo.State != asynq.TaskStatePending {
		t.Errorf("a job enqueued after SIGTERM on a queue only the stopping worker serves is %s, want pending", sinfo.State)
	}
	if n := len(w.of("short")); n > 0 {
		t.Errorf("the stopping worker started a new job's sandbox")
	}
	sc.figure("SIGTERM with --shutdown-grace %s: worker exited %s later (code 0: %v); the job was handed back unchanged (retried %d, no result); a job enqueued meanwhile stayed %s",
		grace, stopped.Round(100*time.Millisecond), a.Err() == nil, info.Retried, sinfo.State)

	r := sc.result(long, 3*time.Minute)
	if r.Status != jobs.StatusSucceeded || r.Worker != b.name || r.Attempt != 1 {
		t.Errorf("the handed-back job: %s (%s) on %s, attempt %d; want succeeded on %s, attempt 1 (the interrupted one not counted)", r.Status, r.Reason, r.Worker, r.Attempt, b.name)
	}
	a2 := sc.worker("term-a2", workerOpts{queues: qa, stateDir: a.stateDir})
	w.add(a2.runscRoot())
	if rs := sc.result(short, 3*time.Minute); rs.Worker != a2.name {
		t.Errorf("the waiting job ran on %s, want %s", rs.Worker, a2.name)
	}
	w.finish()
	ss := w.of("long")
	if len(ss) != 2 {
		t.Errorf("the long job had %d sandboxes, want 2 (the killed one and the rerun)", len(ss))
	}
	if ov := overlaps(ss); len(ov) > 0 {
		t.Errorf("two sandboxes of one job existed at once: %v", ov)
	}
	if len(ss) == 2 {
		sc.figure("the job's 2 sandboxes never coexisted (%d polls of both runsc roots): the first last seen %s, the second created %s later",
			w.polls, ss[0].last.Format(time.StampMilli), ss[1].created.Sub(ss[0].last).Round(time.Millisecond))
	}
	sc.finish(3 * time.Minute)
}
