package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// LaunchFile is the file a warm sandbox runs, in JobDir (JobMount inside).
// A warm sandbox's process is fixed when it is created, before its job is
// known: it runs `/bin/sh JobMount/LaunchFile`, and WarmRunner.Prepare
// writes there a script that sets exactly the job's environment and execs
// the job's own command (see launcher). The shell replaces itself, so the
// job's process is the sandbox's first, as in a cold sandbox; the file
// stays visible to the job, read-only.
const LaunchFile = ".sandq-launch"

// MaxWarm bounds a WarmRunner's pool.
const MaxWarm = 64

// WarmRunner is a Runner that keeps a pool of sandboxes created ahead of
// demand by the runner it wraps: scratch space, outputs tmpfs, log capture
// and `runsc create` done, not started. Prepare hands a job one of them
// when the job fits the pool's shape and one is ready, and otherwise
// prepares one with the wrapped runner. Only jobs of the pool's shape fit:
// the same image, user, limits (the timeout and CPU limit aside: Run sets
// those for the job) and no network, because
// the container's cgroup limits, disk overlay, outputs tmpfs and the memory
// size the guest sees are fixed at create.
//
// Each sandbox serves one job once, like any sandbox. When a sandbox that
// Prepare handed out is released, the pool makes another in place of those
// taken: so making the next one (a runsc create, CPU-heavy) does not
// compete with the job that took the last one while it starts and runs.
type WarmRunner struct {
	base     warmBase
	shape    Spec
	logger   *slog.Logger
	pool     *pool[Sandbox]
	failures atomic.Int64
}

var _ Runner = (*WarmRunner)(nil)

// warmBase is what a WarmRunner needs of the runner it wraps besides
// Prepare: handing a sandbox it created for the pool's shape to a job.
// RunscRunner is one.
type warmBase interface {
	Runner
	// adopt gives sb, prepared by this runner for the pool's shape and
	// created, to the job of spec, whose launcher is in its JobDir: the
	// sandbox takes the job's name, arguments, environment and timeout,
	// counts its set-up from now and reports Warm.
	adopt(sb Sandbox, spec Spec) error
	warmLogger() *slog.Logger
}

// NewWarmRunner checks shape and returns a runner that keeps size
// sandboxes of that shape ready, made by base, which must be a
// RunscRunner; Start begins filling the pool. shape's Name, Args, Env and
// timeout are not used. The image must have /bin/sh and /usr/bin/env.
//
// Close releases the pooled sandboxes; it does not close base, which the
// caller still owns, and sandboxes already handed out are their jobs' to
// release.
func NewWarmRunner(base Runner, shape Spec, size int) (*WarmRunner, error) {
	b, ok := base.(warmBase)
	if !ok {
		return nil, errors.New("warm sandboxes need the runsc runner")
	}
	if size < 1 || size > MaxWarm {
		return nil, fmt.Errorf("warm sandboxes: %d: want 1 to %d", size, MaxWarm)
	}
	if shape.Egress != nil {
		return nil, errors.New("warm sandboxes: the shape has a network; only jobs without one use warm sandboxes")
	}
	shape.Name = "warm"
	shape.Args = []string{"/bin/sh", JobMount + "/" + LaunchFile}
	if shape.Limits.Timeout <= 0 {
		shape.Limits.Timeout = time.Hour
	}
	if err := checkSpec(shape); err != nil {
		return nil, fmt.Errorf("warm sandboxes: %w", err)
	}
	if err := checkLauncherTools(shape.Image); err != nil {
		return nil, fmt.Errorf("warm sandboxes: %w", err)
	}
	p := &WarmRunner{base: b, shape: shape, logger: b.warmLogger().With("warm_pool", size)}
	p.pool = newPool(size, p.make, p.failed)
	return p, nil
}

// checkLauncherTools refuses an image without the shell and env a warm
// sandbox's launcher uses, resolving their links inside the image.
func checkLauncherTools(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("image %s: %w", rootfs, err)
	}
	defer root.Close()
	for _, p := range []string{"bin/sh", "usr/bin/env"} {
		st, err := root.Stat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("image %s has no executable /%s, which a warm sandbox's launcher runs", rootfs, p)
		}
	}
	return nil
}

// Start fills the pool in the background until Close.
func (p *WarmRunner) Start() { p.pool.start() }

// failed logs a sandbox the pool could not make; the next try comes after
// 1s, doubling to 30s while they keep failing.
func (p *WarmRunner) failed(err error, inARow int) (time.Duration, bool) {
	p.failures.Add(1)
	backoff := min(time.Second<<min(inARow-1, 5), 30*time.Second)
	p.logger.Error("making a warm sandbox", "err", err, "retry_in", backoff)
	return backoff, false
}

// make prepares and creates one sandbox of the pool's shape.
func (p *WarmRunner) make(ctx context.Context) (Sandbox, error) {
	sb, err := p.base.Prepare(ctx, p.shape)
	if err != nil {
		return nil, err
	}
	if err := sb.Create(ctx); err != nil {
		return nil, errors.Join(err, sb.Release(ctx))
	}
	return sb, nil
}

// fits reports whether a job of spec may run in one of the pool's
// sandboxes: its shape matches, and its environment sets HOME.
func (p *WarmRunner) fits(spec Spec) bool {
	a, b := spec.Limits, p.shape.Limits
	// The timeout and the CPU limit are the job's own, set as it starts.
	a.Timeout, b.Timeout = 0, 0
	a.CPUs, b.CPUs = 0, 0
	if spec.Egress != nil || spec.Image != p.shape.Image || spec.UID != p.shape.UID || spec.GID != p.shape.GID || a != b {
		return false
	}
	if len(spec.Args) == 0 || !strings.HasPrefix(spec.Args[0], "/") || strings.Contains(spec.Args[0], "=") {
		return false
	}
	for _, a := range spec.Args {
		if a == JobMount+"/"+LaunchFile {
			return false
		}
	}
	// runsc gives a cold sandbox's process a HOME when its environment has
	// none; the launcher does not, so only specs that set it fit.
	return slices.ContainsFunc(spec.Env, func(kv string) bool { return strings.HasPrefix(kv, "HOME=") })
}

// Prepare returns a warm sandbox for a job of spec, its launcher written,
// when the job fits the pool's shape and one is ready; its Create does
// nothing (the container exists), and its Outcome counts its set-up from
// now (CreatedAt) and reports Warm. Otherwise it returns the wrapped
// runner's Prepare. Releasing either has the pool make up for what was
// taken.
func (p *WarmRunner) Prepare(ctx context.Context, spec Spec) (Sandbox, error) {
	if sb := p.take(spec); sb != nil {
		return &handedOut{Sandbox: sb, pool: p, warm: true}, nil
	}
	sb, err := p.base.Prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &handedOut{Sandbox: sb, pool: p}, nil
}

// take returns a ready sandbox given to the job of spec, or nil when none
// is ready or the job does not fit.
func (p *WarmRunner) take(spec Spec) Sandbox {
	if !p.fits(spec) {
		return nil
	}
	sb, ok := p.pool.take()
	if !ok {
		p.pool.misses.Add(1)
		return nil
	}
	err := os.WriteFile(filepath.Join(sb.JobDir(), LaunchFile), []byte(launcher(spec.Args, spec.Env, p.shape.Env)), 0o644)
	if err == nil {
		err = p.base.adopt(sb, spec)
	}
	if err != nil {
		p.logger.Error("handing a warm sandbox to its job", "sandbox", sb.ID(), "err", err)
		sb.Release(context.Background())
		p.pool.misses.Add(1)
		p.pool.refill()
		return nil
	}
	p.pool.hits.Add(1)
	return sb
}

// handedOut is a sandbox the WarmRunner's Prepare returned: releasing it
// has the pool refill.
type handedOut struct {
	Sandbox
	pool *WarmRunner
	warm bool
}

func (s *handedOut) Release(ctx context.Context) error {
	err := s.Sandbox.Release(ctx)
	s.pool.pool.refill()
	return err
}

// IsWarm reports whether sb was created ahead of its job by a WarmRunner.
func IsWarm(sb Sandbox) bool {
	h, ok := sb.(*handedOut)
	return ok && h.warm
}

// launcher is the script that replaces the warm sandbox's shell with the
// job's command, in exactly the job's environment: it unsets what the
// sandbox was created with (inherited) and the job does not set, exports
// the job's variables and execs the command, so the shell is the only
// extra exec (each costs about 8 ms in gVisor). Names a shell cannot export
// fall back to `env -i`, one exec more.
func launcher(args, env, inherited []string) string {
	var b strings.Builder
	set := map[string]bool{}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !shellName(name) {
			b.WriteString("exec /usr/bin/env -i")
			for _, w := range append(append([]string(nil), env...), args...) {
				b.WriteByte(' ')
				b.WriteString(shellQuote(w))
			}
			b.WriteByte('\n')
			return b.String()
		}
		set[name] = true
	}
	// PWD: the shell exports it; a cold sandbox's process has none.
	for _, kv := range append(append([]string(nil), inherited...), "PWD=") {
		if name, _, _ := strings.Cut(kv, "="); !set[name] && shellName(name) {
			b.WriteString("unset " + name + "\n")
		}
	}
	for _, kv := range env {
		b.WriteString("export " + shellQuote(kv) + "\n")
	}
	b.WriteString("exec")
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(shellQuote(a))
	}
	b.WriteByte('\n')
	return b.String()
}

// shellName reports whether name is a variable name sh can export.
func shellName(name string) bool {
	if name == "" || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, r := range name {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// shellQuote quotes s for sh: in single quotes, each quote inside closed,
// escaped and reopened.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Ready is how many warm sandboxes wait for a job.
func (p *WarmRunner) Ready() int { return p.pool.readyCount() }

// Stats are the jobs that found a warm sandbox ready (hits), those of the
// pool's shape that found none ready (misses; jobs that do not fit are not
// counted) and the sandboxes the pool failed to make.
func (p *WarmRunner) Stats() (hits, misses, failures int64) {
	return p.pool.hits.Load(), p.pool.misses.Load(), p.failures.Load()
}

// Close stops filling and releases the sandboxes still waiting. It does
// not close the wrapped runner; Prepare then always uses it.
func (p *WarmRunner) Close(ctx context.Context) error { return p.pool.close(ctx) }

// adopt gives one of this runner's sandboxes, created for a WarmRunner's
// shape, to the job of spec (see warmBase).
func (r *RunscRunner) adopt(s Sandbox, spec Spec) error {
	sb, ok := s.(*runscSandbox)
	if !ok || sb.r != r {
		return fmt.Errorf("sandbox %s is not this runner's", s.ID())
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.spec.Name, sb.spec.Args, sb.spec.Env, sb.spec.Limits.Timeout, sb.spec.Limits.CPUs = spec.Name, spec.Args, spec.Env, spec.Limits.Timeout, spec.Limits.CPUs
	sb.logger = r.logger.With("sandbox", sb.id, "job_id", spec.Name)
	sb.createdAt = time.Now()
	sb.warm = true
	return nil
}

func (r *RunscRunner) warmLogger() *slog.Logger { return r.logger }
