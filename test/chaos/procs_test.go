package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/multihost"
)

// worker is a `sandq worker` child process. It is signalled by its own PID
// only: other tests on this machine run sandq workers too.
type worker struct {
	*testenv.Process
	label    string
	pid      int
	stateDir string
	// id is the worker's directory under stateDir/workers (its lock holds
	// the pid); name is hostname:pid, as results record it.
	id, name string
}

type workerOpts struct {
	queues      string // --queues
	concurrency int
	grace       time.Duration // --shutdown-grace
	stateDir    string        // default: a new one under the suite's dir
	extra       []string      // more flags
}

// startWorker starts a worker and waits until it takes jobs. It is stopped
// (SIGTERM, then SIGKILL) when the test ends if it still runs.
func startWorker(t *testing.T, label string, o workerOpts) *worker {
	t.Helper()
	if o.concurrency == 0 {
		o.concurrency = 2
	}
	if o.grace == 0 {
		o.grace = 10 * time.Second
	}
	if o.stateDir == "" {
		o.stateDir = filepath.Join(env.dir, "state-"+label+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	}
	args := append([]string{"worker",
		"--state-dir", o.stateDir, "--queues", o.queues, "--concurrency", strconv.Itoa(o.concurrency),
		"--shutdown-grace", o.grace.String(), "--metrics-addr", "",
		"--image-dir", env.imageDir, "--image", env.image,
		"--egress-config", env.egress, "--webhook-config", env.hooks,
	}, o.extra...)
	cmd := exec.Command(env.bin, args...)
	cmd.Env = workerEnv()
	p, err := testenv.StartProcess(cmd, filepath.Join(env.dir, "logs", fmt.Sprintf("worker-%s-%d.log", label, time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{Process: p, label: label, pid: p.Pid(), stateDir: o.stateDir}
	host, _ := os.Hostname()
	w.name = fmt.Sprintf("%s:%d", host, w.pid)
	t.Cleanup(func() { w.stop(t, 2*time.Minute) })

	if _, err := w.WaitOutput("worker started", 3*time.Minute); err != nil {
		t.Fatalf("worker %s did not start: %v", label, err)
	}
	if w.id = workerDirOf(o.stateDir, w.pid); w.id == "" {
		t.Fatalf("worker %s (pid %d): no directory under %s holds its lock", label, w.pid, o.stateDir)
	}
	t.Logf("worker %s: pid %d, dir %s, log %s", label, w.pid, w.id, w.LogPath)
	return w
}

// workerEnv is the worker's environment: the suite's services, and two
// secrets no job may see (the store's secret key and a canary).
func workerEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SANDQ_") {
			out = append(out, kv)
		}
	}
	return append(out,
		"SANDQ_REDIS_ADDR="+env.stack.RedisAddr, "SANDQ_S3_ENDPOINT="+env.stack.MinioAddr,
		"SANDQ_S3_ACCESS_KEY="+accessKey, "SANDQ_S3_SECRET_KEY="+env.secretKey, "SANDQ_S3_BUCKET="+bucket,
		"SANDQ_CHAOS_CANARY="+env.canary, "SANDQ_LOG_LEVEL=info")
}

// workerDirOf finds the worker directory whose lock file names pid.
func workerDirOf(stateDir string, pid int) string {
	locks, _ := filepath.Glob(filepath.Join(stateDir, "workers", "*", "lock"))
	for _, l := range locks {
		b, err := os.ReadFile(l)
		if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
			return filepath.Base(filepath.Dir(l))
		}
	}
	return ""
}

func (w *worker) log() string { return w.Output() }

func (w *worker) alive() bool { return w.Alive() }

// signal sends sig to this worker's process, by its PID, if it still runs.
func (w *worker) signal(sig syscall.Signal) error { return w.Signal(sig) }

// kill SIGKILLs the worker and waits for it to be gone.
func (w *worker) kill(t *testing.T) {
	t.Helper()
	if err := w.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.Exited()
}

// stop sends SIGTERM and waits up to d, then SIGKILLs it. It reports
// whether it exited by itself.
func (w *worker) stop(t *testing.T, d time.Duration) bool {
	if w.Stop(d) {
		return true
	}
	t.Errorf("worker %s (pid %d) still running %s after SIGTERM; killed it", w.label, w.pid, d)
	return false
}

// rssBytes is the worker process's resident memory.
func (w *worker) rssBytes() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n << 10
		}
	}
	return 0
}

// runscRoot is the --root of this worker's containers.
func (w *worker) runscRoot() string { return filepath.Join(w.stateDir, "workers", w.id, "runsc") }

// container is one runsc container as `runsc list` shows it, with the tag
// of its job (the CHAOS_TAG variable in its bundle's environment).
type container struct {
	ID, Status, Bundle string
	Created            time.Time
	Tag                string
}

// containers lists the containers under a runsc root; a root that does not
// exist has none. The text format is read: only it has creation times.
func containers(root string) ([]container, error) {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "runsc", "--root="+root, "list").Output()
	if err != nil {
		if _, serr := os.Stat(root); errors.Is(serr, os.ErrNotExist) {
			return nil, nil // removed meanwhile
		}
		return nil, fmt.Errorf("runsc list %s: %w", root, err)
	}
	parsed, err := multihost.ParseRunscList(string(out))
	if err != nil {
		return nil, err
	}
	var list []container
	for _, c := range parsed {
		list = append(list, container{ID: c.ID, Status: c.Status, Bundle: c.Bundle, Created: c.Created, Tag: c.Env("CHAOS_TAG")})
	}
	return list, nil
}

// waitContainers waits until root holds n containers.
func waitContainers(t *testing.T, root string, n int, within time.Duration) []container {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		list, err := containers(root)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) >= n {
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d containers under %s after %s, want %d", len(list), root, within, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
