package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// How a sandbox's container came to run its job (Outcome.StartMode).
const (
	// StartCold: created and started for the job.
	StartCold = "cold"
	// StartWarm: created ahead of the job by a WarmRunner, started for it.
	StartWarm = "warm"
	// StartRestored: created for the job and restored from a snapshot
	// template by a SnapshotRunner.
	StartRestored = "restored"
)

// SnapshotRunner is a Runner that starts the jobs that fit one of its
// snapshot templates from it: a new container per job, made by the runsc
// runner below the one it wraps, restored from the template's checkpoint
// while the job's files download (in Create), and handed the job's request
// when it is to run (in Run). Every other job is prepared by the wrapped
// runner (the runsc runner, or a WarmRunner around it). StartPools keeps
// sandboxes restored ahead of demand as well (see snapshot_pool.go); Close
// releases those.
//
// A template that fails to restore, or whose checkpoint is gone, is
// quarantined: one log line, and the jobs that fit it start cold from then
// on; its directory is set aside so that the next start builds it again.
// The job whose restore failed gets a cold container in the same sandbox.
type SnapshotRunner struct {
	base   Runner
	runsc  *RunscRunner
	logger *slog.Logger

	mu        sync.RWMutex
	templates []*snapshotTemplate
	pools     map[*snapshotTemplate]*restorePool

	restored    atomic.Int64
	fallbacks   atomic.Int64
	quarantines atomic.Int64
}

var _ Runner = (*SnapshotRunner)(nil)

type snapshotTemplate struct {
	*Template
	quarantined atomic.Bool
}

// NewSnapshotRunner wraps base, which must be the runsc runner or a
// WarmRunner around it, with templates (made by that runsc runner's
// EnsureTemplate). It does not close base.
func NewSnapshotRunner(base Runner, templates []*Template) (*SnapshotRunner, error) {
	rr := runscOf(base)
	if rr == nil {
		return nil, errors.New("snapshots need the runsc runner")
	}
	p := &SnapshotRunner{base: base, runsc: rr, logger: rr.logger.With("component", "snapshots")}
	for _, t := range templates {
		if t == nil {
			return nil, errors.New("snapshots: a nil template")
		}
		p.templates = append(p.templates, &snapshotTemplate{Template: t})
	}
	return p, nil
}

// Build makes (or finds) the template of ts with the runsc runner (see
// RunscRunner.EnsureTemplate) and starts the jobs that fit it from it.
func (p *SnapshotRunner) Build(ctx context.Context, ts TemplateSpec) (*Template, error) {
	t, err := p.runsc.EnsureTemplate(ctx, ts)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.templates = append(p.templates, &snapshotTemplate{Template: t})
	p.mu.Unlock()
	return t, nil
}

// runscOf is the runsc runner r is or wraps, or nil.
func runscOf(r Runner) *RunscRunner {
	switch r := r.(type) {
	case *RunscRunner:
		return r
	case *WarmRunner:
		rr, _ := r.base.(*RunscRunner)
		return rr
	}
	return nil
}

// Prepare prepares a sandbox to be restored from a template the job fits
// (one restored ahead of it, when the template has a pool with one ready);
// otherwise it returns the wrapped runner's.
func (p *SnapshotRunner) Prepare(ctx context.Context, spec Spec) (Sandbox, error) {
	t := p.match(spec)
	if t == nil {
		return p.base.Prepare(ctx, spec)
	}
	if _, err := os.Stat(filepath.Join(t.CheckpointDir(), templateStateFile)); err != nil {
		p.quarantine(t, err)
		return p.base.Prepare(ctx, spec)
	}
	if sb := p.fromPool(t, spec); sb != nil {
		return sb, nil
	}
	return p.prepareRestore(ctx, t, spec)
}

// prepareRestore prepares the scratch space of a sandbox for the job of
// spec, to be restored from t: its launcher is in its JobDir, and the
// container's process is t's.
func (p *SnapshotRunner) prepareRestore(ctx context.Context, t *snapshotTemplate, spec Spec) (*restoredSandbox, error) {
	s, err := p.runsc.Prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	sb := s.(*runscSandbox)
	// The job as the runsc runner prepared it: a networked job's
	// environment names its proxy. The restored container gets its own
	// network namespace as a cold one would (runsc configures the restored
	// stack from the namespace it is created in).
	sb.mu.Lock()
	job := sb.spec
	sb.mu.Unlock()
	req, err := json.Marshal(snapshotRequest{Argv: job.Args, Env: job.Env, Cwd: WorkDir})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("snapshot request: %w", err), sb.Release(ctx))
	}
	if err := os.WriteFile(filepath.Join(sb.JobDir(), SnapshotLauncherFile), []byte(snapshotLauncher), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("%w: snapshot launcher: %w", ErrSandbox, err), sb.Release(ctx))
	}
	sb.mu.Lock()
	sb.restore = &restorePlan{runner: p, t: t, job: job, request: req}
	// The container's process is the template's, which restore checks
	// against the checkpoint's; the job's own is in its request.
	sb.spec.Args, sb.spec.Env = t.args(), t.Info.Env
	sb.mu.Unlock()
	return &restoredSandbox{runscSandbox: sb}, nil
}

// snapshotRequest is what the restored launcher reads: the job's argv
// (interpreter, script, arguments), whole environment and working
// directory.
type snapshotRequest struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Cwd  string   `json:"cwd"`
}

// restorePlan is how a prepared sandbox is to be restored.
type restorePlan struct {
	runner  *SnapshotRunner
	t       *snapshotTemplate
	job     Spec
	request []byte
}

// args is the template process's argv.
func (t *Template) args() []string {
	return append([]string{t.Info.Python, JobMount + "/" + SnapshotLauncherFile}, t.Info.Preload...)
}

// match is the first template spec fits, not quarantined, or nil.
func (p *SnapshotRunner) match(spec Spec) *snapshotTemplate {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, t := range p.templates {
		if !t.quarantined.Load() && t.Fits(spec) {
			return t
		}
	}
	return nil
}

// Fits reports whether a job of spec can start from t (networked or not):
// t's image, user, memory and disk size; a script in the job directory run by
// t's interpreter without options; arguments and environment in UTF-8
// (the request carries them as JSON); and the same values as t for the
// environment variables the interpreter and the preloaded modules read as
// they start (snapshotFixedEnv).
func (t *Template) Fits(spec Spec) bool {
	i := t.Info
	l := spec.Limits
	if spec.Image != t.rootfs || spec.UID != i.UID || spec.GID != i.GID || l.Memory != i.Memory || l.Disk != i.Disk {
		return false
	}
	if len(spec.Args) < 2 || spec.Args[0] != i.Python || !strings.HasPrefix(spec.Args[1], JobMount+"/") ||
		strings.HasPrefix(path.Base(spec.Args[1]), ".sandq-") || path.Clean(spec.Args[1]) != spec.Args[1] {
		return false
	}
	for _, s := range append(append([]string(nil), spec.Args...), spec.Env...) {
		if !utf8.ValidString(s) {
			return false
		}
	}
	job, tmpl := envMap(spec.Env), envMap(i.Env)
	for _, m := range []map[string]string{job, tmpl} {
		for name := range m {
			if !snapshotFixedEnv(name) {
				continue
			}
			a, aok := job[name]
			b, bok := tmpl[name]
			if a != b || aok != bok {
				return false
			}
		}
	}
	return true
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// snapshotFixedEnv reports whether variable name is read as the
// interpreter starts or as common data modules are imported (the dynamic
// loader's and the C library's settings, encodings, the home directory,
// Python's own settings, matplotlib's, the thread counts of numerical
// libraries), which a restored job cannot change.
func snapshotFixedEnv(name string) bool {
	switch name {
	case "HOME", "LANG", "LANGUAGE", "GLIBC_TUNABLES":
		return true
	}
	for _, p := range []string{"LD_", "MALLOC_", "LC_", "PYTHON", "MPL", "OMP_", "OPENBLAS_", "GOTO_", "MKL_", "NUMEXPR_", "BLIS_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// quarantine stops t from being used: one log line, the directory set
// aside for the next start to rebuild.
func (p *SnapshotRunner) quarantine(t *snapshotTemplate, cause error) {
	if !t.quarantined.CompareAndSwap(false, true) {
		return
	}
	p.quarantines.Add(1)
	if err := setAside(t.Dir, "bad"); err != nil {
		p.logger.Warn("setting a quarantined snapshot template aside", "template", t.Dir, "err", err)
	}
	p.logger.Error("snapshot template quarantined: the jobs that fit it start cold until the worker builds it again at its next start",
		"template", t.Dir, "image_digest", t.Info.ImageDigest, "err", cause)
}

// Stats are the containers restored from a template (for jobs, or ahead of
// them into pools), the jobs whose restore failed and that started cold
// instead, and the templates quarantined.
func (p *SnapshotRunner) Stats() (restored, fallbacks, quarantined int64) {
	return p.restored.Load(), p.fallbacks.Load(), p.quarantines.Load()
}

// Templates are the runner's templates that are not quarantined.
func (p *SnapshotRunner) Templates() []*Template {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []*Template
	for _, t := range p.templates {
		if !t.quarantined.Load() {
			out = append(out, t.Template)
		}
	}
	return out
}

// restoredSandbox is a runsc sandbox whose container is restored from a
// template in Create; Run, kill, timeout, OOM, outputs and release are the
// runsc sandbox's own.
type restoredSandbox struct {
	*runscSandbox
	// pooled is set for a sandbox a pool restored ahead of its job.
	pooled bool
}

// IsRestored reports whether sb was prepared by a SnapshotRunner to be
// restored from a template (its restore may still fail over to a cold
// start; Outcome.StartMode says what happened).
func IsRestored(sb Sandbox) bool {
	switch sb.(type) {
	case *restoredSandbox, *pooledSandbox:
		return true
	}
	return false
}

// Create creates the container and restores the template into it (a
// pooled sandbox was, ahead of its job). When the restore fails the
// template is quarantined and the container created again, cold, for the
// job.
func (s *restoredSandbox) Create(ctx context.Context) error {
	s.mu.Lock()
	plan, ready := s.restore, s.pooled
	s.mu.Unlock()
	if ready {
		return nil
	}
	err := s.createAndRestore(ctx)
	if err == nil || plan == nil || !errors.Is(err, errRestore) {
		return err
	}
	plan.runner.quarantine(plan.t, err)
	plan.runner.fallbacks.Add(1)
	return s.fallBackCold(ctx, plan)
}

// errRestore marks a failed `runsc restore`, as opposed to a failed create.
var errRestore = errors.New("restore failed")

// createAndRestore creates the container and restores its template into
// it, without falling back.
func (s *restoredSandbox) createAndRestore(ctx context.Context) error {
	s.mu.Lock()
	plan := s.restore
	s.mu.Unlock()
	if err := s.runscSandbox.Create(ctx); err != nil || plan == nil {
		return err
	}
	began := time.Now()
	if _, err := s.runsc(context.WithoutCancel(ctx), time.Minute, "restore", "--detach", "--image-path", plan.t.CheckpointDir(), s.id); err != nil {
		return fmt.Errorf("%w: snapshot template %s: %w: %w", ErrSandbox, plan.t.Dir, errRestore, err)
	}
	s.mu.Lock()
	s.restored = true
	s.mu.Unlock()
	plan.runner.restored.Add(1)
	s.logger.Debug("container restored", "template", plan.t.Dir, "restore_ms", time.Since(began).Milliseconds())
	return nil
}

// fallBackCold deletes the container a failed restore left and creates the
// job's own, cold, in the same scratch space; the job's set-up still
// counts from the first create.
func (s *restoredSandbox) fallBackCold(ctx context.Context, plan *restorePlan) error {
	if err := s.delete(ctx); err != nil {
		return fmt.Errorf("%w: deleting the container of a failed restore from %s: %w", ErrSandbox, plan.t.Dir, err)
	}
	s.mu.Lock()
	logs, created := s.logs, s.createdAt
	s.logs, s.created, s.restore = nil, false, nil
	s.spec = plan.job
	s.mu.Unlock()
	if logs != nil {
		logs.finish(s.logger, nil)
	}
	var errs []error
	old, _ := filepath.Glob(filepath.Join(s.bootLogDir(), "*"))
	for _, p := range append(old, filepath.Join(s.dir, "logs", "stdout.log"), filepath.Join(s.dir, "logs", "stderr.log"),
		s.pidFile(), filepath.Join(s.JobDir(), SnapshotLauncherFile)) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: clearing a failed restore's files: %w", ErrSandbox, err)
	}
	err := s.runscSandbox.Create(ctx)
	s.mu.Lock()
	s.createdAt = created
	s.mu.Unlock()
	return err
}

// Run creates and restores the container unless Create did, then runs the
// job as the runsc sandbox does (startProcess hands the launcher its
// request).
func (s *restoredSandbox) Run(ctx context.Context) (*Outcome, error) {
	s.mu.Lock()
	created := s.created
	s.mu.Unlock()
	if !created {
		if err := s.Create(ctx); err != nil {
			return nil, err
		}
	}
	return s.runscSandbox.Run(ctx)
}

// startProcess starts the job's process: `runsc start`, or in a restored
// container, writing the request the waiting launcher polls for (renamed
// into place whole).
func (s *runscSandbox) startProcess(ctx context.Context) error {
	if !s.restored {
		_, err := s.runsc(ctx, time.Minute, "start", s.id)
		return err
	}
	final := filepath.Join(s.JobDir(), SnapshotRequestFile)
	tmp := final + ".tmp"
	if err := os.WriteFile(tmp, s.restore.request, 0o644); err != nil {
		return fmt.Errorf("snapshot request: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("snapshot request: %w", err)
	}
	return nil
}

// startMode is how the container came to run its job.
func (s *runscSandbox) startMode() string {
	switch {
	case s.restored:
		return StartRestored
	case s.warm:
		return StartWarm
	}
	return StartCold
}
