package executor

import (
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
)

// testImage is the image `make test` builds, for tests that start
// sandboxes: they need root and runsc too. They skip under -short and fail
// otherwise.
func testImage(t *testing.T) string {
	t.Helper()
	testenv.NeedRunsc(t)
	img := testenv.NeedImage(t)
	p, err := image.Path(img.Dir, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// testRunner is a runner with a state directory of its own, closed when the
// test ends, and the test image.
func testRunner(t *testing.T) (*RunscRunner, string) {
	t.Helper()
	image := testImage(t)
	ctx := context.Background()
	r, err := NewRunscRunner(ctx, RunscConfig{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(ctx) })
	return r, image
}

func sleeper(image string) Spec {
	return Spec{
		Name: "sweep-test", Image: image, Args: []string{"/bin/sleep", "600"}, Env: []string{"PATH=/bin:/usr/bin"},
		UID: 1000, GID: 1000,
		Limits: Limits{Timeout: 10 * time.Minute, Memory: 128 << 20, Disk: 32 << 20, OutputBytes: 1 << 20, OutputFiles: 10, Pids: 64, LogBytes: 1 << 20, LogTail: 1024},
	}
}

// startSleeper runs a sandbox that sleeps, and returns once it is running.
func startSleeper(t *testing.T, r *RunscRunner, image string, networked bool) Sandbox {
	t.Helper()
	ctx := context.Background()
	spec := sleeper(image)
	if networked {
		spec.Egress = &Egress{Policy: egress.Policy{Hosts: []string{"example.com"}}}
	}
	sb, err := r.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	go sb.Run(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ids, _ := r.Containers(ctx)
		if len(ids) == 1 && ids[0] == sb.ID() && processWith(sb.ID()) {
			return sb
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s did not start (containers %v)", sb.ID(), ids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processWith reports whether a sandbox or gofer process of container id
// exists (runsc's own client commands naming the ID do not count).
func processWith(id string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		cmd := string(b)
		if err == nil && strings.Contains(cmd, id) && (strings.HasPrefix(cmd, "runsc-sandbox") || strings.HasPrefix(cmd, "runsc-gofer")) {
			return true
		}
	}
	return false
}

// goneWithin waits up to d for container id's processes to exit.
func goneWithin(id string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for processWith(id) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func TestStartingWorkerSweepsDeadWorkersLeftovers(t *testing.T) {
	image := testImage(t)
	ctx := context.Background()
	state := t.TempDir()
	netCfg := &NetworkConfig{Pool: netip.MustParsePrefix("10.202.0.0/24")}
	dead, err := NewRunscRunner(ctx, RunscConfig{StateDir: state, Network: netCfg})
	if err != nil {
		t.Fatal(err)
	}
	sb := startSleeper(t, dead, image, true)
	// Its rules: the accept rule and the bypass counter.
	if _, netns, ifaces, rules, _ := dead.net.Resources(dead.workerID); len(netns) != 1 || len(ifaces) != 1 || len(rules) != 2 {
		t.Fatalf("the networked sandbox has netns %v ifaces %v rules %v", netns, ifaces, rules)
	}
	deadDir := dead.dir
	mounts, _ := runsc.MountsUnder(deadDir)
	if len(mounts) == 0 {
		t.Fatal("the sandbox has no outputs mount to leave behind")
	}
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", dead.cgroupDir(), sb.ID()))
	if len(cgroups) == 0 {
		t.Fatal("the sandbox has no cgroup to leave behind")
	}
	// Another live worker's sandbox must survive the sweep.
	neighbour, err := NewRunscRunner(ctx, RunscConfig{StateDir: state, Network: netCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer neighbour.Close(ctx)
	other := startSleeper(t, neighbour, image, true)

	// The worker dies: the kernel drops its lock and its goroutines end
	// with it (the firewall watcher among them, which would otherwise put
	// its rules back after the sweep); nothing else is cleaned.
	dead.net.Close()
	dead.lock.Close()

	next, err := NewRunscRunner(ctx, RunscConfig{StateDir: state, Network: netCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close(ctx)
	if _, err := os.Stat(deadDir); !os.IsNotExist(err) {
		t.Errorf("dead worker's directory still there: %v", err)
	}
	if !goneWithin(sb.ID(), 5*time.Second) {
		t.Errorf("dead worker's sandbox %s still running", sb.ID())
	}
	if m, _ := runsc.MountsUnder(deadDir); len(m) != 0 {
		t.Errorf("dead worker's mounts left: %v", m)
	}
	for _, cg := range cgroups {
		if _, err := os.Stat(cg); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left", cg)
		}
	}
	if leases, netns, ifaces, rules, _ := next.net.Resources(dead.workerID); len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("dead worker's network left: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
	if _, netns, _, rules, _ := next.net.Resources(neighbour.workerID); len(netns) != 1 || len(rules) != 2 {
		t.Errorf("the live neighbour's network was swept: netns %v rules %v", netns, rules)
	}
	if ids, _ := neighbour.Containers(ctx); len(ids) != 1 || ids[0] != other.ID() || !processWith(other.ID()) {
		t.Errorf("the live neighbour's sandbox was swept: %v", ids)
	}
	if err := neighbour.Close(ctx); err != nil {
		t.Errorf("closing the neighbour: %v", err)
	}
	if leases, netns, ifaces, rules, _ := next.net.Resources(neighbour.workerID); len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("Close left the neighbour's network: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
	if !goneWithin(other.ID(), 5*time.Second) {
		t.Errorf("Close left sandbox %s running", other.ID())
	}
}

// A container created before its job's files arrive runs with the files as
// they are at start, and a sandbox is created and run once only.
func TestCreateThenFillThenRun(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	spec := sleeper(image)
	spec.Args = []string{"/bin/sh", JobMount + "/job.sh"}
	sb, err := r.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Release(ctx)
	if err := sb.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := r.Containers(ctx); len(ids) != 1 || ids[0] != sb.ID() {
		t.Fatalf("after Create: containers %v, want [%s]", ids, sb.ID())
	}
	if err := sb.Create(ctx); err == nil || !strings.Contains(err.Error(), "already created") {
		t.Fatalf("second Create: %v", err)
	}
	script := "cat " + InputsMount + "/in.txt > " + OutputsMount + "/out.txt; exit 7\n"
	if err := os.WriteFile(filepath.Join(sb.JobDir(), "job.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sb.InputsDir(), "in.txt"), []byte("written after create"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := sb.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out.ExitCode == nil || *out.ExitCode != 7 {
		t.Fatalf("exit code %v, want 7 (stderr %q)", out.ExitCode, out.Stderr.Tail)
	}
	coll, err := sb.Outputs()
	if err != nil {
		t.Fatal(err)
	}
	if len(coll.Files) != 1 || coll.Files[0].Path != "out.txt" {
		t.Fatalf("outputs %+v", coll.Files)
	}
	f, err := coll.Open(coll.Files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	if string(b) != "written after create" {
		t.Fatalf("output %q", b)
	}
	if _, err := sb.Run(ctx); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second Run: %v", err)
	}
	if err := sb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Fatalf("after Release: containers %v", ids)
	}
}

// Without the sandbox's pid (or inotify), Run falls back to runsc wait and
// still reports the exit status, whether the job outlives wait's arrival or
// not (then the boot log says it).
func TestRunFallsBackToRunscWait(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	for _, script := range []string{"sleep 1; exit 5\n", "exit 5\n"} {
		spec := sleeper(image)
		spec.Args = []string{"/bin/sh", JobMount + "/job.sh"}
		sb, err := r.Prepare(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Create(ctx); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(sb.(*runscSandbox).pidFile()); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(sb.JobDir(), "job.sh"), []byte(script), 0o644)
		out, err := sb.Run(ctx)
		if err != nil {
			t.Fatalf("%q: %v", script, err)
		}
		if out.ExitCode == nil || *out.ExitCode != 5 {
			t.Fatalf("%q: exit %v, want 5", script, out.ExitCode)
		}
		if err := sb.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
