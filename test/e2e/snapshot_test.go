package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

// startSnapshotWorker starts a worker with cfg (snapshots on) and runsc
// settings rc, and checks it made one template, beside the image; a
// template made for the test is removed when it ends.
func startSnapshotWorker(t *testing.T, cfg jobs.Config, rc executor.RunscConfig) *sandqtest.Worker {
	t.Helper()
	templates := filepath.Join(cfg.Worker.ImageDir, cfg.Worker.Image, "templates")
	had := map[string]bool{}
	if ents, err := os.ReadDir(templates); err == nil {
		for _, e := range ents {
			had[e.Name()] = true
		}
	}
	x := startWorker(t, cfg, rc)
	tmpl := x.SnapshotTemplates()
	if len(tmpl) != 1 || filepath.Dir(tmpl[0].Dir) != templates {
		t.Fatalf("templates %+v, want one in %s", tmpl, templates)
	}
	if !had[filepath.Base(tmpl[0].Dir)] {
		// Made for this test: gone with it.
		t.Cleanup(func() { os.RemoveAll(tmpl[0].Dir) })
	}
	return x
}

// A worker with snapshots runs python jobs of the default limits restored
// from its image's template, through the same cases as cold ones: inputs,
// outputs, arguments and environment, logs, exit codes, an uncaught
// exception, the timeout, the memory limit and cancellation; restored jobs
// share no state; a job of another shape runs cold. Nothing is left when the
// worker stops.
func TestSnapshotJobs(t *testing.T) {
	queue := "snapshot-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.Snapshots = true
	x := startSnapshotWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	ctx := context.Background()
	run := func(sub jobs.Submission) *jobs.Result {
		t.Helper()
		sub.Queue = queue
		return x.Run(t, sub, 3*time.Minute)
	}
	restored := func(r *jobs.Result, status jobs.Status) {
		t.Helper()
		if r.Status != status || r.Timings == nil || r.Timings.StartMode != jobs.StartRestored {
			t.Fatalf("job %s: %s (%s), timings %+v; want %s, restored; stderr %q", r.ID, r.Status, r.Reason, r.Timings, status, r.Stderr.Tail)
		}
	}

	// Inputs, outputs, arguments, environment, logs: the same as cold.
	script := `import json, os, sys
data = open(os.path.join(os.environ["INPUT_DIR"], "numbers.csv")).read()
out = os.environ["OUTPUT_DIR"]
os.makedirs(os.path.join(out, "nested"))
json.dump({"sum": sum(int(x) for x in data.split()), "args": sys.argv, "cwd": os.getcwd(), "uid": os.getuid(),
           "env": dict(os.environ), "main": __name__}, open(os.path.join(out, "nested", "facts.json"), "w"), sort_keys=True)
print("first line")
print("to stderr", file=sys.stderr)
`
	sub := jobs.Submission{Script: file(t, "facts.py", script), Inputs: []jobs.File{file(t, "numbers.csv", "1\n2\n3\n")},
		Args: []string{"--flag", "two words"}, Env: map[string]string{"GREETING": "hello 'world' $HOME"}}
	warm := run(sub)
	restored(warm, jobs.StatusSucceeded)
	coldSub := sub
	coldSub.Limits = jobs.LimitRequest{MemoryBytes: 512 << 20}
	cold := run(coldSub)
	wantStatus(t, cold, jobs.StatusSucceeded)
	if cold.Timings.StartMode != jobs.StartCold {
		t.Fatalf("a job with its own memory limit started %s", cold.Timings.StartMode)
	}
	if len(warm.Outputs) != 1 || warm.Outputs[0].Path != "nested/facts.json" || len(cold.Outputs) != 1 {
		t.Fatalf("outputs %+v and %+v", warm.Outputs, cold.Outputs)
	}
	if a, b := string(download(t, warm.Outputs[0].URL)), string(download(t, cold.Outputs[0].URL)); a != b || !strings.Contains(a, `"sum": 6`) {
		t.Errorf("facts differ:\nrestored %s\ncold     %s", a, b)
	}
	if warm.Stdout.Tail != "first line\n" || warm.Stderr.Tail != "to stderr\n" || string(download(t, warm.Stdout.URL)) != "first line\n" {
		t.Errorf("logs: stdout %q stderr %q", warm.Stdout.Tail, warm.Stderr.Tail)
	}

	// Output flushed as the job runs, as cold (the job directory's
	// sitecustomize, run by the launcher): the print comes before a raw
	// write two seconds later.
	lines := run(jobs.Submission{Script: file(t, "lines.py", "import os, time\nprint('first')\ntime.sleep(2)\nos.write(1, b'second\\n')\n")})
	restored(lines, jobs.StatusSucceeded)
	if lines.Stdout.Tail != "first\nsecond\n" {
		t.Errorf("restored python's stdout %q, want first (flushed), then second", lines.Stdout.Tail)
	}

	// Exit codes and an uncaught exception.
	r := run(jobs.Submission{Script: file(t, "fail.py", "import sys\nsys.stderr.write('something broke\\n')\nsys.exit(3)\n")})
	restored(r, jobs.StatusFailed)
	if r.ExitCode == nil || *r.ExitCode != 3 || r.Stderr.Tail != "something broke\n" {
		t.Errorf("exit %v stderr %q", r.ExitCode, r.Stderr.Tail)
	}
	r = run(jobs.Submission{Script: file(t, "raise.py", "def f():\n    raise KeyError('gone')\nf()\n")})
	restored(r, jobs.StatusFailed)
	if r.ExitCode == nil || *r.ExitCode != 1 || !strings.HasPrefix(r.Stderr.Tail, "Traceback (most recent call last):\n  File \"/mnt/job/raise.py\", line 3, in <module>") ||
		!strings.HasSuffix(r.Stderr.Tail, "KeyError: 'gone'\n") {
		t.Errorf("exit %v stderr %q", r.ExitCode, r.Stderr.Tail)
	}

	// No shared state: random numbers differ, a file one job leaves in /tmp
	// is not there for the next.
	probe := file(t, "probe.py", `import os, random
print(random.random(), sorted(os.listdir("/tmp")))
open("/tmp/left-by-a-job", "w").write("x")
`)
	a, b := run(jobs.Submission{Script: probe}), run(jobs.Submission{Script: probe})
	restored(a, jobs.StatusSucceeded)
	restored(b, jobs.StatusSucceeded)
	if a.Stdout.Tail == b.Stdout.Tail || strings.Contains(b.Stdout.Tail, "left-by-a-job") {
		t.Errorf("restored jobs share state: %q then %q", a.Stdout.Tail, b.Stdout.Tail)
	}

	// Without network a restored job reaches nothing: not a host beyond
	// this one (a stand-in, which really answers from the host), not the
	// host's own services.
	far, accepted := testenv.StandInHost(t, testenv.StandInNet{Name: "sandq-e2e-snapfar", HostIf: "e2esnap0h", PeerIf: "e2esnap0n", Subnet: netip.MustParsePrefix("10.209.10.0/30")})
	l, hostConns := testenv.Listen(t, "0.0.0.0:0")
	targets := []string{"tcp:" + far.String() + ":9999", "tcp:" + hostAddress(t) + ":" + fmt.Sprint(l.Port)}
	r = run(jobs.Submission{Script: file(t, "direct.py", testenv.BypassProbe), Args: append([]string{"5"}, targets...)})
	restored(r, jobs.StatusSucceeded)
	for target, got := range testenv.ProbeResults(r.Stdout.Tail) {
		if got[0] == "connected" {
			t.Errorf("a restored job without network reached %s", target)
		}
	}
	if n := len(testenv.ProbeResults(r.Stdout.Tail)); n != len(targets) || accepted() != 0 || hostConns.Load() != 0 {
		t.Errorf("%d of %d probes ran; the stand-in host accepted %d, the host service %d\n%s", n, len(targets), accepted(), hostConns.Load(), r.Stdout.Tail)
	}

	// The timeout and the memory limit kill a restored job as a cold one.
	r = run(jobs.Submission{Script: file(t, "sleep.py", "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"), Limits: jobs.LimitRequest{TimeoutSeconds: 5}})
	restored(r, jobs.StatusTimedOut)
	if r.ExitCode != nil || r.Signal != "SIGKILL" || r.Stdout.Tail != "sleeping\n" || r.DurationMS < 5000 || r.DurationMS > 15000 {
		t.Errorf("timed out: exit %v signal %q stdout %q after %d ms", r.ExitCode, r.Signal, r.Stdout.Tail, r.DurationMS)
	}
	r = run(jobs.Submission{Script: file(t, "balloon.py", "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n")})
	restored(r, jobs.StatusOutOfMemory)

	// Cancelling a running restored job kills it.
	enq, err := x.Client.Enqueue(ctx, jobs.Submission{Queue: queue, Script: file(t, "long.py", "import time\nprint('started', flush=True)\ntime.sleep(600)\n")})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for x.Running() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if out, err := x.Client.Cancel(ctx, enq.ID); err != nil || out != jobs.CancelSignalled {
		t.Fatalf("cancel: %v %v", out, err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := x.Client.Wait(wctx, enq.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	restored(st.Result, jobs.StatusCanceled)

	// The worker's metrics count the restored starts and its template.
	if n := workerMetric(t, x.Worker, `sandq_job_starts_total{queue="snapshot-e2e",start_mode="restored"}`); n < 1 {
		t.Errorf("restored job starts counted %v", n)
	}
	if n := workerMetric(t, x.Worker, "sandq_snapshot_restores_total"); n < 1 {
		t.Errorf("sandq_snapshot_restores_total %v", n)
	}
	if n := workerMetric(t, x.Worker, "sandq_snapshot_templates"); n != 1 {
		t.Errorf("sandq_snapshot_templates %v, want 1", n)
	}

	x.Stop()
	if ids, err := x.Runner.Containers(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("containers after the worker stopped: %v %v", ids, err)
	}
	mounts, _ := runsc.MountsUnder(filepath.Join(env.state, "workers", x.Runner.WorkerID()))
	for _, m := range mounts {
		if strings.Contains(m, "/sandboxes/") {
			t.Errorf("sandbox mount left: %s", m)
		}
	}
}

// A worker with a snapshot pool hands a python job of the default limits a
// sandbox restored before the job came, and restores another in its place;
// the job runs as any restored one. Nothing is left when the worker stops.
func TestSnapshotPoolJobs(t *testing.T) {
	queue := "snapshot-pool-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.Snapshots = true
	cfg.Worker.SnapshotPool = 2
	x := startSnapshotWorker(t, cfg, executor.RunscConfig{StateDir: env.state})
	waitReady := func(n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for x.SnapshotPoolReady() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d restored sandboxes ready after a minute, want %d", x.SnapshotPoolReady(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitReady(2)
	r := x.Run(t, jobs.Submission{Queue: queue, Script: file(t, "pooled.py", "import os, sys\nprint('pooled', sys.argv[1:], open(os.environ['INPUT_DIR'] + '/in.txt').read())\n"),
		Args: []string{"a b"}, Inputs: []jobs.File{file(t, "in.txt", "the input")}}, 3*time.Minute)
	if r.Status != jobs.StatusSucceeded || r.Timings.StartMode != jobs.StartRestored || r.Stdout.Tail != "pooled ['a b'] the input\n" {
		t.Fatalf("pooled job: %s (%s) %+v stdout %q stderr %q", r.Status, r.Reason, r.Timings, r.Stdout.Tail, r.Stderr.Tail)
	}
	t.Logf("pooled job: sandbox_start %d ms, download %d ms, total in worker %d ms", r.Timings.SandboxStartMS, r.Timings.DownloadMS, r.Timings.TotalInWorkerMS)
	waitReady(2)
	waitWorkerMetric(t, x.Worker, "sandq_snapshot_pool_ready", 2)
	if n := workerMetric(t, x.Worker, "sandq_snapshot_pool_hits_total"); n != 1 {
		t.Errorf("sandq_snapshot_pool_hits_total %v, want 1", n)
	}
	x.Stop()
	if ids, err := x.Runner.Containers(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("containers after the worker stopped: %v %v", ids, err)
	}
}

// A networked python job is restored too, into a network namespace of its
// own: its allowed request goes through its proxy to the (stand-in)
// upstream and is audited, a direct socket to a host beyond this one is
// refused at once and counted, and a pooled sandbox (which has no network)
// is never handed to it. Nothing of its network is left.
func TestSnapshotNetworkedJobs(t *testing.T) {
	up := newStandInUpstream(t)
	const queue = "snapshot-egress-e2e"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.Snapshots = true
	cfg.Worker.SnapshotPool = 1
	cfg.Egress.Groups = map[string][]string{"standin": {standInHost}}
	cfg.Egress.Queues = map[string]jobs.QueueEgress{queue: {Max: []string{"standin"}, Default: []string{"standin"}, Ports: []int{up.port}}}
	proxy := egress.Config{Resolver: testenv.Resolver{standInHost: testenv.Loopback}, AllowRanges: []string{"127.0.0.1/32"}}
	x := startSnapshotWorker(t, cfg, executor.RunscConfig{StateDir: env.state, Network: &executor.NetworkConfig{Proxy: proxy}})
	far, accepted := testenv.StandInHost(t, testenv.StandInNet{Name: "sandq-e2e-snapnet", HostIf: "e2esnap1h", PeerIf: "e2esnap1n", Subnet: netip.MustParsePrefix("10.209.11.0/30")})
	script := file(t, "fetch.py", fmt.Sprintf(`import os, socket, sys, urllib.request, urllib.error
print("proxy", os.environ.get("HTTPS_PROXY", "none"))
try:
    urllib.request.urlopen("http://%s:%d/restored-job", timeout=20)
except urllib.error.HTTPError as e:
    print("upstream answered", e.code)
s = socket.socket()
s.settimeout(10)
try:
    s.connect((%q, 9999))
    print("direct connected")
except Exception as e:
    print("direct", type(e).__name__)
`, standInHost, up.port, far.String()))
	deadline := time.Now().Add(time.Minute)
	for x.SnapshotPoolReady() != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	r := x.Run(t, jobs.Submission{Queue: queue, Script: script, Network: []string{"standin"}}, 3*time.Minute)
	if r.Status != jobs.StatusSucceeded || r.Timings == nil || r.Timings.StartMode != jobs.StartRestored {
		t.Fatalf("networked job: %s (%s), timings %+v; stdout %q stderr %q", r.Status, r.Reason, r.Timings, r.Stdout.Tail, r.Stderr.Tail)
	}
	if !strings.Contains(r.Stdout.Tail, "proxy http://") || !strings.Contains(r.Stdout.Tail, "upstream answered 404") ||
		!strings.Contains(r.Stdout.Tail, "direct ConnectionRefusedError") {
		t.Errorf("the restored networked job saw:\n%s\nstderr %s", r.Stdout.Tail, r.Stderr.Tail)
	}
	if got := up.seen(); len(got) != 1 || got[0] != "/restored-job" {
		t.Errorf("the stand-in upstream saw %q", got)
	}
	if n := accepted(); n != 0 {
		t.Errorf("the stand-in host beyond this one accepted %d connections", n)
	}
	if e := r.Egress; e == nil || e.Allowed != 1 || e.Bypass == nil || e.Bypass.Attempts != 1 {
		t.Errorf("egress %+v", e)
	}
	if n := workerMetric(t, x.Worker, "sandq_snapshot_pool_hits_total"); n != 0 {
		t.Errorf("a networked job took a pooled sandbox: hits %v", n)
	}
	x.Stop()
	assertNoNetworksOf(t, x.Runner.WorkerID())
}
