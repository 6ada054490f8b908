package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/internal/runsc"
)

// RunscConfig configures the gVisor runner.
type RunscConfig struct {
	// Runsc is the runsc binary. Default: "runsc" on PATH.
	Runsc string
	// Platform is runsc's --platform. Default systrap.
	Platform string
	// StateDir holds this host's per-worker scratch space and runsc state.
	// Default /var/lib/sandq.
	StateDir string
	// CgroupParent is the cgroup under which each sandbox gets its own.
	// Default /sandq.
	CgroupParent string
	// ExtraFlags are added to every runsc invocation (e.g. --debug).
	ExtraFlags []string
	Logger     *slog.Logger
	// Network enables sandboxes with egress. Without it, a spec asking for
	// egress is refused.
	Network *NetworkConfig
}

// NetworkConfig configures job networks and the egress proxy.
type NetworkConfig struct {
	// Pool of addresses, split into /30s. Default 10.200.0.0/16.
	Pool netip.Prefix
	// Proxy configures the egress proxy.
	Proxy egress.Config
}

// WithDefaults fills unset fields.
func (c RunscConfig) WithDefaults() RunscConfig {
	if c.Runsc == "" {
		c.Runsc = DefaultRunsc
	}
	if c.Platform == "" {
		c.Platform = DefaultPlatform
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.CgroupParent == "" {
		c.CgroupParent = DefaultCgroupParent
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// RunscRunner runs each job in a new runsc container. One RunscRunner is
// one worker's: it owns a directory under StateDir, held by a lock for the
// process's lifetime, so that a later worker can tell a dead predecessor's
// leftovers from a live neighbour's and sweep them.
type RunscRunner struct {
	cfg      RunscConfig
	runsc    string
	workerID string
	dir      string // StateDir/workers/<workerID>
	lock     *os.File
	logger   *slog.Logger

	mu   sync.Mutex
	live map[string]*runscSandbox

	net   *jobnet.Manager // nil when the host cannot make job networks
	proxy *egress.Proxy   // nil without Network configured
	// cleanup tears down the worker directory, lock, job networks and
	// proxy, in reverse order of their making.
	cleanup cleanup.Stack
}

var _ Runner = (*RunscRunner)(nil)

// NewRunscRunner checks the host (CheckPrivileges) and runsc (CheckRunsc),
// claims a worker directory and sweeps what dead workers on this host left
// behind. On error, nothing it made is left.
func NewRunscRunner(ctx context.Context, cfg RunscConfig) (_ *RunscRunner, err error) {
	cfg = cfg.WithDefaults()
	// No sandbox is weaker than the one asked for: without the privileges,
	// or with a runsc that is missing or too old, the worker does not start.
	if err := CheckPrivileges(cfg.CgroupParent); err != nil {
		return nil, err
	}
	ver, err := CheckRunsc(ctx, cfg.Runsc, cfg.Platform)
	if err != nil {
		return nil, err
	}
	cfg.Logger.Info("runsc", "path", ver.Path, "version", ver.Version, "date", ver.Date.Format(time.DateOnly))
	workers := filepath.Join(cfg.StateDir, "workers")
	if err := os.MkdirAll(workers, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	id := "w" + randomHex(6)
	r := &RunscRunner{cfg: cfg, runsc: ver.Path, workerID: id, dir: filepath.Join(workers, id), logger: cfg.Logger.With("worker_dir", id), live: map[string]*runscSandbox{}}
	// What is made from here is torn down by Close, or at once on error.
	defer r.cleanup.ReleaseOnError(ctx, &err)
	if err := os.Mkdir(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("worker dir: %w", err)
	}
	// The directory is cleaned while the lock is held, so that a starting
	// worker never sweeps it at the same time.
	r.cleanup.Add("worker dir", func(ctx context.Context) error {
		err := runsc.CleanDir(ctx, r.runsc, r.dir, r.cgroupDir())
		if r.lock != nil {
			err = errors.Join(err, r.lock.Close())
		}
		return err
	})
	if r.lock, err = lockDir(r.dir); err != nil {
		return nil, err
	}
	var pool netip.Prefix
	if cfg.Network != nil {
		pool = cfg.Network.Pool
	}
	if nets, err := jobnet.New(jobnet.Config{Pool: pool, WorkerID: id, LockPath: r.lock.Name()}); err != nil {
		if cfg.Network != nil {
			return nil, fmt.Errorf("job networks: %w", err)
		}
		// Only sweeping dead workers' networks needs it then.
		r.logger.Warn("job networks unavailable on this host", "err", err)
	} else {
		r.net = nets
		r.cleanup.Add("job networks", func(context.Context) error {
			nets.Close()
			return nets.SweepWorker(id)
		})
		nets.Watch(2*time.Second, func(err error) {
			r.logger.Error("job network firewall", "err", err)
		})
	}
	if cfg.Network != nil {
		pc := cfg.Network.Proxy
		if pc.Logger == nil {
			pc.Logger = cfg.Logger
		}
		if r.proxy, err = egress.New(pc); err != nil {
			return nil, fmt.Errorf("egress proxy: %w", err)
		}
		r.cleanup.Add("egress proxy", func(context.Context) error { return r.proxy.Close() })
	}
	if err := r.Sweep(ctx); err != nil {
		r.logger.Warn("sweeping dead workers' leftovers", "err", err)
	}
	return r, nil
}

// WorkerID names this runner's directory under StateDir/workers.
func (r *RunscRunner) WorkerID() string { return r.workerID }

// RunscRoot is the --root of this runner's containers.
func (r *RunscRunner) RunscRoot() string { return filepath.Join(r.dir, "runsc") }

// Containers lists the runsc containers of this runner that exist now.
func (r *RunscRunner) Containers(ctx context.Context) ([]string, error) {
	return runsc.List(ctx, r.runsc, r.RunscRoot())
}

// Close kills what is still running, removes this runner's directory and
// releases its lock.
func (r *RunscRunner) Close(ctx context.Context) error {
	r.mu.Lock()
	live := make([]*runscSandbox, 0, len(r.live))
	for _, sb := range r.live {
		live = append(live, sb)
	}
	r.mu.Unlock()
	var errs []error
	for _, sb := range live {
		errs = append(errs, sb.Release(ctx))
	}
	errs = append(errs, r.cleanup.Release(ctx))
	return errors.Join(errs...)
}

func (r *RunscRunner) cgroupDir() string { return filepath.Join(r.cfg.CgroupParent, r.workerID) }

// Prepare makes the sandbox's scratch space: directories for the bundle,
// job, inputs and logs, the overlay file store, and a size- and inode-capped
// tmpfs for outputs, so a job can never fill the host's disk through them.
func (r *RunscRunner) Prepare(ctx context.Context, spec Spec) (_ Sandbox, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	id := "sandq-" + randomHex(8)
	sb := &runscSandbox{r: r, id: id, spec: spec, dir: filepath.Join(r.dir, "sandboxes", id)}
	sb.logger = r.logger.With("sandbox", id, "job_id", spec.Name)
	defer sb.cleanup.ReleaseOnError(ctx, &err)
	if err := os.MkdirAll(sb.dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: scratch dir: %w", ErrSandbox, err)
	}
	sb.cleanup.Add("scratch dir", func(context.Context) error { return os.RemoveAll(sb.dir) })
	for _, d := range []string{"bundle", "inputs", "job", "outputs", "logs", "overlay"} {
		mode := os.FileMode(0o755)
		if d == "bundle" || d == "logs" || d == "overlay" {
			mode = 0o700
		}
		if err := os.Mkdir(filepath.Join(sb.dir, d), mode); err != nil {
			return nil, fmt.Errorf("%w: scratch dir: %w", ErrSandbox, err)
		}
	}
	outputs := sb.OutputsDir()
	opts := fmt.Sprintf("size=%d,nr_inodes=%d,mode=0755,uid=%d,gid=%d", spec.Limits.OutputBytes, spec.Limits.OutputFiles+1, spec.UID, spec.GID)
	if err := unix.Mount("sandq-outputs", outputs, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return nil, fmt.Errorf("%w: mount outputs tmpfs: %w", ErrSandbox, err)
	}
	sb.cleanup.Add("outputs mount", func(context.Context) error { return runsc.Unmount(outputs) })
	if spec.Egress != nil {
		if r.proxy == nil || r.net == nil {
			return nil, errors.New("this worker has no network configured; a job with egress cannot run here")
		}
		n, err := r.net.Setup(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("%w: network: %w", ErrSandbox, err)
		}
		sb.cleanup.Add("network", func(context.Context) error { return n.Release() })
		sess, err := r.proxy.Register(spec.Name, n.Proxy, n.Sandbox, spec.Egress.Policy, spec.Egress.Limits)
		if err != nil {
			return nil, fmt.Errorf("%w: egress proxy: %w", ErrSandbox, err)
		}
		sb.cleanup.Add("proxy session", func(context.Context) error { sess.Close(); return nil })
		sb.net, sb.session = n, sess
		// The proxy is the only way out (anything else is refused at
		// once by the firewall): every variable tools read for a proxy
		// names it, ALL_PROXY for those that read only that one.
		proxy := "http://" + n.Proxy.String()
		sb.spec.Env = append(append([]string(nil), spec.Env...),
			"HTTP_PROXY="+proxy, "HTTPS_PROXY="+proxy, "http_proxy="+proxy, "https_proxy="+proxy,
			"ALL_PROXY="+proxy, "all_proxy="+proxy,
			"NO_PROXY=localhost,127.0.0.1", "no_proxy=localhost,127.0.0.1")
	}
	r.mu.Lock()
	r.live[id] = sb
	r.mu.Unlock()
	sb.cleanup.Add("registry", func(context.Context) error {
		r.mu.Lock()
		delete(r.live, id)
		r.mu.Unlock()
		return nil
	})
	return sb, nil
}

func checkSpec(spec Spec) error {
	l := spec.Limits
	switch {
	case len(spec.Args) == 0 || !strings.HasPrefix(spec.Args[0], "/"):
		return errors.New("sandbox args: the first must be an absolute path")
	case l.CPUs < 0 || l.CPUs != l.CPUs || math.IsInf(l.CPUs, 0) || (l.CPUs > 0 && l.CPUs < MinCPUs):
		return fmt.Errorf("sandbox CPU limit %v: want 0 (none) or from %v", l.CPUs, MinCPUs)
	case l.Timeout <= 0 || l.Memory <= 0 || l.Disk <= 0 || l.OutputBytes <= 0 || l.OutputFiles <= 0 || l.Pids <= 0 || l.LogBytes <= 0:
		return fmt.Errorf("sandbox limits must all be positive: %+v", l)
	}
	if err := CheckImage(spec.Image); err != nil {
		return fmt.Errorf("%w: %w", ErrSandbox, err)
	}
	return nil
}

// CheckImage refuses a directory that is not a usable image root
// filesystem: one without /bin, or without a file in /tmp.
func CheckImage(rootfs string) error {
	st, err := os.Stat(filepath.Join(rootfs, "bin"))
	if err != nil || !st.IsDir() {
		return fmt.Errorf("image %s is not a root filesystem (no /bin)", rootfs)
	}
	// runsc mounts an unlimited tmpfs over an empty /tmp, which would escape
	// the disk limit; images keep a file there so /tmp stays on the overlay.
	ents, err := os.ReadDir(filepath.Join(rootfs, "tmp"))
	if err != nil || len(ents) == 0 {
		return fmt.Errorf("image %s: /tmp must exist and not be empty, or runsc would mount an unbounded tmpfs there", rootfs)
	}
	return nil
}

type runscSandbox struct {
	r       *RunscRunner
	id      string
	spec    Spec
	dir     string
	logger  *slog.Logger
	cleanup cleanup.Stack
	// mu guards created, ran and logs: Create may run beside the caller's
	// other preparations.
	mu        sync.Mutex
	created   bool
	createdAt time.Time
	ran       bool
	logs      *sandboxLogs
	// warm is set when a WarmRunner gave the sandbox to its job.
	warm bool
	// restore is set for a sandbox a SnapshotRunner prepared, restored
	// once its container was (see snapshot_runner.go).
	restore  *restorePlan
	restored bool
	// deleted is set once Run has deleted the container, so Release does
	// not call runsc for it again.
	deleted bool
	net     *jobnet.Net
	session *egress.Session
	// live hears the output as it is drained (Follow); its logs are
	// drained through it, including those of a container created again
	// after a failed restore.
	live liveTee
}

func (s *runscSandbox) ID() string         { return s.id }
func (s *runscSandbox) InputsDir() string  { return filepath.Join(s.dir, "inputs") }
func (s *runscSandbox) JobDir() string     { return filepath.Join(s.dir, "job") }
func (s *runscSandbox) OutputsDir() string { return filepath.Join(s.dir, "outputs") }
func (s *runscSandbox) bundleDir() string  { return filepath.Join(s.dir, "bundle") }
func (s *runscSandbox) bootLogDir() string { return filepath.Join(s.dir, "logs", "runsc") }
func (s *runscSandbox) pidFile() string    { return filepath.Join(s.dir, "sandbox.pid") }
func (s *runscSandbox) cgroupPath() string { return filepath.Join(s.r.cgroupDir(), s.id) }

// Follow sends what the sandbox writes from now on to out as well.
func (s *runscSandbox) Follow(out LiveOutput) { s.live.set(out) }

// flags are runsc's global flags for this sandbox, the same on every call.
func (s *runscSandbox) flags() []string {
	return runsc.Flags(s.r.RunscRoot(), s.r.cfg.Platform, filepath.Join(s.dir, "overlay"), s.spec.Limits.Disk, s.net != nil, s.r.cfg.ExtraFlags)
}

func (s *runscSandbox) runsc(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return runsc.Output(runsc.Command(ctx, s.r.runsc, s.flags(), args...), args[0])
}

// sandboxLogs captures a container's stdout and stderr from pipes whose
// write ends the container holds.
type sandboxLogs struct {
	stdout, stderr *LogCapture
	outR, errR     *os.File
	drained        sync.WaitGroup
}

func (s *runscSandbox) openLogs() (_ *sandboxLogs, outW, errW *os.File, err error) {
	var made cleanup.Stack
	defer made.ReleaseOnError(context.Background(), &err)
	lim := s.spec.Limits
	capture := func(name string) (*LogCapture, error) {
		c, err := NewLogCapture(filepath.Join(s.dir, "logs", name+".log"), lim.LogBytes-lim.LogBytes/8, lim.LogBytes/8, lim.LogTail)
		if err == nil {
			made.Add(name+" log", func(context.Context) error { return c.Close() })
		}
		return c, err
	}
	pipe := func(name string) (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err == nil {
			made.Add(name+" pipe", func(context.Context) error { return errors.Join(r.Close(), w.Close()) })
		}
		return r, w, err
	}
	l := &sandboxLogs{}
	if l.stdout, err = capture("stdout"); err != nil {
		return nil, nil, nil, err
	}
	if l.stderr, err = capture("stderr"); err != nil {
		return nil, nil, nil, err
	}
	if l.outR, outW, err = pipe("stdout"); err != nil {
		return nil, nil, nil, err
	}
	if l.errR, errW, err = pipe("stderr"); err != nil {
		return nil, nil, nil, err
	}
	drain := func(r *os.File, w teeCapture) {
		defer l.drained.Done()
		io.Copy(w, r)
	}
	l.drained.Add(2)
	go drain(l.outR, teeCapture{l.stdout, &s.live, StreamStdout})
	go drain(l.errR, teeCapture{l.stderr, &s.live, StreamStderr})
	return l, outW, errW, nil
}

// finish waits for the pipes to drain and closes the logs. The sandbox holds
// the pipes' write ends until every process in it is gone; the container is
// deleted before this, so they close soon.
func (l *sandboxLogs) finish(logger *slog.Logger, out *Outcome) {
	done := make(chan struct{})
	go func() { l.drained.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		logger.Warn("log pipes still open 10s after the sandbox ended; closing them")
		l.outR.Close()
		l.errR.Close()
		<-done
	}
	l.outR.Close()
	l.errR.Close()
	l.stdout.Close()
	l.stderr.Close()
	if out != nil {
		out.Stdout = l.stdout.Summary()
		out.Stderr = l.stderr.Summary()
	}
}

// Create writes the bundle and creates the container without starting it.
// The job's process, its arguments and environment are fixed now; files put
// in JobDir and InputsDir afterwards, before Run, are what the job sees,
// because the container's file systems are mounted when it starts. On
// failure the container is gone again.
func (s *runscSandbox) Create(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warm && !s.ran {
		return nil // created ahead of its job
	}
	if s.created || s.ran {
		return errors.New("sandbox already created: a sandbox runs one job once")
	}
	s.created = true
	s.createdAt = time.Now()
	netns := ""
	if s.net != nil {
		netns = s.net.Netns
	}
	if err := writeBundle(s.bundleDir(), ociSpec(s.spec, s.InputsDir(), s.JobDir(), s.OutputsDir(), s.cgroupPath(), netns)); err != nil {
		return fmt.Errorf("%w: bundle: %w", ErrSandbox, err)
	}
	logs, outW, errW, err := s.openLogs()
	if err != nil {
		return err
	}
	// From here a container may exist: delete it whatever happens.
	s.cleanup.Add("container", func(ctx context.Context) error {
		if s.deleted {
			return nil
		}
		return s.delete(ctx)
	})
	create := runsc.Command(context.Background(), s.r.runsc, append(s.flags(), runsc.BootLogFlags(s.bootLogDir())...), "create", "--pid-file", s.pidFile(), "--bundle", s.bundleDir(), s.id)
	create.Stdin = nil
	create.Stdout = outW
	create.Stderr = errW
	err = create.Run()
	outW.Close()
	errW.Close()
	if err != nil {
		s.delete(ctx)
		var failed Outcome
		logs.finish(s.logger, &failed)
		return fmt.Errorf("%w: runsc create: %w: %s", ErrSandbox, err, strings.TrimSpace(string(failed.Stderr.Tail)))
	}
	s.logs = logs
	s.logger.Debug("container created", "create_ms", time.Since(s.createdAt).Milliseconds())
	return nil
}

// Run starts the container (creating it first unless Create was called),
// waits for it with the timeout enforced, then deletes it. Errors are
// returned only for failures of the machinery; how the job ended is in the
// Outcome.
func (s *runscSandbox) Run(ctx context.Context) (*Outcome, error) {
	s.mu.Lock()
	created, ran := s.created, s.ran
	s.mu.Unlock()
	if ran {
		return nil, errors.New("sandbox already used: a sandbox runs one job once")
	}
	if !created {
		if err := s.Create(ctx); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	s.ran = true
	logs := s.logs
	out := &Outcome{CreatedAt: s.createdAt, Warm: s.warm, StartMode: s.startMode()}
	s.mu.Unlock()
	if logs == nil {
		return nil, fmt.Errorf("%w: the container could not be created", ErrSandbox)
	}
	lim := s.spec.Limits
	// How the job exits: from the boot log as soon as it says so (see
	// exitwatch.go), or from `runsc wait` when that cannot be watched.
	var waited <-chan waitResult
	if pid, err := readPidFile(s.pidFile()); err != nil {
		s.logger.Warn("no sandbox pid; waiting with runsc wait", "err", err)
	} else if w, err := watchExit(s.bootLogDir(), pid); err != nil {
		s.logger.Warn("cannot watch the sandbox's exit; waiting with runsc wait", "err", err)
	} else {
		defer w.Close()
		waited = w.Result()
	}
	// The job's CPU limit, whatever the sandbox was created with, and
	// the CPU time used so far (creating, restoring or waiting for the
	// job), which is not the job's.
	if err := s.applyCPULimit(lim.CPUs); err != nil {
		s.delete(ctx)
		logs.finish(s.logger, out)
		return nil, fmt.Errorf("%w: %w", ErrSandbox, err)
	}
	cpuBefore, cpuErr := cpuUsage(s.cgroupPath())
	startAt := time.Now()
	if err := s.startProcess(context.WithoutCancel(ctx)); err != nil {
		s.delete(ctx)
		logs.finish(s.logger, out)
		return nil, fmt.Errorf("%w: %w", ErrSandbox, err)
	}
	if waited == nil {
		// runsc wait before start loses the status; after it, only when
		// the job ends first (then the boot log has it, see below).
		waited = s.runscWait(ctx)
	}
	out.StartedAt = time.Now()
	s.logger.Debug("sandbox started", "setup_ms", out.StartedAt.Sub(out.CreatedAt).Milliseconds(), "start_ms", out.StartedAt.Sub(startAt).Milliseconds())

	timer := time.NewTimer(lim.Timeout)
	defer timer.Stop()
	var res waitResult
	killed := func() waitResult {
		s.kill(ctx)
		// The kill ends the application, which the log then states; a
		// sandbox that does not say so is deleted below all the same.
		select {
		case r := <-waited:
			return r
		case <-time.After(30 * time.Second):
			s.logger.Warn("no exit 30s after runsc kill; deleting the sandbox")
			return waitResult{-1, errNoExitStatus}
		}
	}
	select {
	case res = <-waited:
	case <-timer.C:
		out.TimedOut = true
		res = killed()
	case <-ctx.Done():
		out.Interrupted = context.Cause(ctx)
		res = killed()
	}
	out.OOMKilled = oomKills(s.cgroupPath()) > 0
	tasksHit := pidsLimitHits(s.cgroupPath()) > 0
	// The cgroup goes with the container: its count is read now.
	if cpuErr == nil {
		var cpuAfter float64
		if cpuAfter, cpuErr = cpuUsage(s.cgroupPath()); cpuErr == nil {
			used := max(cpuAfter-cpuBefore, 0)
			out.CPUSeconds = &used
		}
	}
	if cpuErr != nil {
		s.logger.Warn("reading the sandbox's CPU time", "err", cpuErr)
	}
	derr := s.delete(ctx)
	if derr == nil {
		s.deleted = true
	}
	out.FinishedAt = time.Now()
	logs.finish(s.logger, out)
	if s.session != nil {
		a := s.session.Close()
		out.Egress = &a
	}
	if s.net != nil {
		// The container is gone: nothing sends from its namespace now.
		if b, err := s.net.Bypass(); err != nil {
			s.logger.Warn("reading the firewall's count of traffic around the proxy", "err", err)
		} else {
			out.Bypass = &b
		}
	}
	if derr != nil {
		return out, fmt.Errorf("%w: %w", ErrSandbox, derr)
	}
	if res.err != nil && !out.TimedOut && out.Interrupted == nil && !out.OOMKilled {
		// With runsc wait: the job ended before wait reached the sandbox
		// (see runsc.BootExitStatus); the sandbox's own log says how.
		if status, ok := runsc.BootExitStatus(s.bootLogDir()); ok {
			s.logger.Debug("exit status read from the sandbox's log", "status", status, "wait_err", res.err)
			res = waitResult{status, nil}
		} else {
			out.TaskLimited = tasksHit
		}
	}
	switch {
	case out.TimedOut || out.Interrupted != nil || out.OOMKilled || out.TaskLimited:
		out.Signal = "SIGKILL"
	case res.err != nil:
		// The sandbox died without an exit status and not from the memory
		// limit: the machinery failed.
		return out, fmt.Errorf("%w: %w", ErrSandbox, res.err)
	case res.status > 128 && res.status < 128+65:
		out.Signal = unix.SignalName(syscall.Signal(res.status - 128))
		code := res.status
		out.ExitCode = &code
	default:
		code := res.status
		out.ExitCode = &code
	}
	return out, nil
}

// runscWait runs `runsc wait` for the sandbox and delivers its status.
func (s *runscSandbox) runscWait(ctx context.Context) <-chan waitResult {
	waited := make(chan waitResult, 1)
	go func() {
		b, err := s.runsc(context.WithoutCancel(ctx), s.spec.Limits.Timeout+time.Hour, "wait", s.id)
		if err != nil {
			waited <- waitResult{-1, err}
			return
		}
		var w struct {
			ExitStatus int `json:"exitStatus"`
		}
		if err := json.Unmarshal(b, &w); err != nil {
			waited <- waitResult{-1, fmt.Errorf("runsc wait: %q: %w", b, err)}
			return
		}
		waited <- waitResult{w.ExitStatus, nil}
	}()
	return waited
}

// readPidFile reads the pid `runsc create --pid-file` wrote: the sandbox
// process's.
func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, b)
	}
	return pid, nil
}

func (s *runscSandbox) kill(ctx context.Context) {
	if _, err := s.runsc(context.WithoutCancel(ctx), 30*time.Second, "kill", "--all", s.id, "KILL"); err != nil {
		s.logger.Debug("runsc kill", "err", err)
	}
}

func (s *runscSandbox) delete(ctx context.Context) error {
	_, err := s.runsc(context.WithoutCancel(ctx), time.Minute, "delete", "--force", s.id)
	if err != nil && runsc.IsNotExist(err) {
		return nil
	}
	return err
}

// Outputs lists the regular files in the outputs filesystem. It refuses to
// run before the container is gone.
func (s *runscSandbox) Outputs() (*Collection, error) {
	if !s.ran {
		return nil, errors.New("outputs: the sandbox has not run")
	}
	return CollectOutputs(s.OutputsDir(), s.spec.Limits.OutputFiles, s.spec.Limits.OutputBytes)
}

// Release removes the container, the outputs mount and the scratch space.
func (s *runscSandbox) Release(ctx context.Context) error {
	return s.cleanup.Release(ctx)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
