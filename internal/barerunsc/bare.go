// Package barerunsc runs bare runsc containers: each made exactly as a
// sandbox's container is — the same OCI spec (executor.WriteBundle) and the
// same runsc global flags and calls (internal/runsc) — but with nothing else
// a sandbox has around it. It is the floor `sandq bench` measures sandq
// against (internal/bench); jobs never run in one.
package barerunsc

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/runsc"
)

// Config configures a Runner.
type Config struct {
	// Runsc is the runsc binary. Default: "runsc" on PATH.
	Runsc string
	// Platform is runsc's --platform. Default systrap.
	Platform string
	// Dir holds the runner's runsc root and its containers' bundles and
	// overlay stores. It is made if missing and removed by Close.
	Dir string
	// CgroupParent is the cgroup under which each container gets its own.
	// Default /sandq/bare-<random>; Close removes it.
	CgroupParent string
	// ExtraFlags are added to every runsc invocation, as
	// executor.RunscConfig's.
	ExtraFlags []string
}

// Runner runs bare containers: each made exactly as a sandbox's
// container is — the same OCI spec and the same runsc global flags and
// calls (create, start, wait, delete) — but with nothing else a sandbox
// has around it: no scratch-space layout, outputs filesystem, log capture,
// limit timer, network or cleanup stack. It is the floor `sandq bench`
// measures sandq against; jobs never run in one.
type Runner struct {
	cfg   Config
	runsc string
}

// Container is one container to run: what runs, and the host
// directories mounted where a sandbox's are (executor.InputsMount,
// executor.JobMount and executor.OutputsMount).
type Container struct {
	// ID names the container; it must be unique under the runner.
	ID   string
	Spec executor.Spec
	// InputsDir, JobDir and OutputsDir are bind-mounted as a sandbox's are.
	InputsDir, JobDir, OutputsDir string
	// Stdout and Stderr receive the process's output; nil discards it.
	Stdout, Stderr *os.File
}

// Result is how a bare container ended, and when each call returned.
type Result struct {
	// ExitStatus is the process's exit status (128+n for signal n).
	ExitStatus int
	// Began is when the bundle was written; Started when runsc start
	// returned (for RunOneShot: zero); Exited when runsc wait returned;
	// Deleted when the container was gone.
	Began, Started, Exited, Deleted time.Time
	// WaitLost is set when runsc wait could not tell the exit status: the
	// sandbox had already exited when wait reached it (see
	// runsc.BootExitStatus). ExitStatus is then read from the sandbox's
	// boot log, as a sandbox's is, or is -1 (StatusLost) when the log does
	// not say.
	WaitLost, StatusLost bool
}

// New checks that the runsc binary exists and makes Dir.
func New(cfg Config) (*Runner, error) {
	if cfg.Runsc == "" {
		cfg.Runsc = executor.DefaultRunsc
	}
	if cfg.Platform == "" {
		cfg.Platform = executor.DefaultPlatform
	}
	if cfg.Dir == "" {
		return nil, errors.New("bare runner: no directory")
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/sandq/bare-" + strings.ToLower(rand.Text()[:12])
	}
	bin, err := exec.LookPath(cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("%w: runsc not found (%s): %w", executor.ErrRunsc, cfg.Runsc, err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "containers"), 0o700); err != nil {
		return nil, fmt.Errorf("bare runner dir: %w", err)
	}
	return &Runner{cfg: cfg, runsc: bin}, nil
}

// Root is the runsc --root of the runner's containers.
func (b *Runner) Root() string { return filepath.Join(b.cfg.Dir, "runsc") }

// Flags are the runsc global flags of a container whose overlay store is
// overlayDir, capped at disk bytes: those a sandbox without network gets.
func (b *Runner) Flags(overlayDir string, disk int64) []string {
	return runsc.Flags(b.Root(), b.cfg.Platform, overlayDir, disk, false, b.cfg.ExtraFlags)
}

// CreateFlags are the flags runsc create gets besides Flags: the boot
// process's log in logDir, as a sandbox's (see runsc.BootLogFlags).
func (b *Runner) CreateFlags(logDir string) []string { return runsc.BootLogFlags(logDir) }

// prepare writes the container's bundle and makes its overlay and boot log
// directories.
func (b *Runner) prepare(c Container) (bundle string, flags []string, err error) {
	if c.ID == "" {
		return "", nil, errors.New("bare container: no ID")
	}
	dir := filepath.Join(b.cfg.Dir, "containers", c.ID)
	bundle = filepath.Join(dir, "bundle")
	if err := executor.WriteBundle(bundle, c.Spec, c.InputsDir, c.JobDir, c.OutputsDir, filepath.Join(b.cfg.CgroupParent, c.ID)); err != nil {
		return "", nil, fmt.Errorf("bare container %s: bundle: %w", c.ID, err)
	}
	overlay := filepath.Join(dir, "overlay")
	for _, d := range []string{overlay, filepath.Join(dir, "runsc-log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, fmt.Errorf("bare container %s: %w", c.ID, err)
		}
	}
	return bundle, b.Flags(overlay, c.Spec.Limits.Disk), nil
}

func (b *Runner) command(ctx context.Context, flags []string, args ...string) *exec.Cmd {
	return runsc.Command(ctx, b.runsc, flags, args...)
}

// boot is the runsc command (create or run) that boots c's sandbox from
// bundle, with the boot log flags (logDir) and c's Stdout and Stderr.
func (b *Runner) boot(ctx context.Context, subcommand string, c Container, flags []string, bundle, logDir string) *exec.Cmd {
	cmd := b.command(ctx, append(append([]string(nil), flags...), b.CreateFlags(logDir)...), subcommand, "--bundle", bundle, c.ID)
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	return cmd
}

func (b *Runner) call(ctx context.Context, flags []string, args ...string) ([]byte, error) {
	return runsc.Output(b.command(ctx, flags, args...), args[0])
}

// Run runs c with runsc create (with the boot log flags), start, wait and
// delete --force, the calls a sandbox makes, and removes its bundle,
// overlay store and boot log.
func (b *Runner) Run(ctx context.Context, c Container) (_ *Result, err error) {
	res := &Result{Began: time.Now()}
	bundle, flags, err := b.prepare(c)
	if err != nil {
		return nil, err
	}
	defer func() {
		_, derr := b.call(context.WithoutCancel(ctx), flags, "delete", "--force", c.ID)
		if derr != nil && runsc.IsNotExist(derr) {
			derr = nil
		}
		res.Deleted = time.Now()
		err = errors.Join(err, derr, os.RemoveAll(filepath.Dir(bundle)))
	}()
	logDir := filepath.Join(filepath.Dir(bundle), "runsc-log")
	if err := b.boot(ctx, "create", c, flags, bundle, logDir).Run(); err != nil {
		return nil, fmt.Errorf("runsc create %s: %w", c.ID, err)
	}
	if _, err := b.call(ctx, flags, "start", c.ID); err != nil {
		return nil, err
	}
	res.Started = time.Now()
	out, err := b.call(ctx, flags, "wait", c.ID)
	res.Exited = time.Now()
	if err != nil && strings.Contains(err.Error(), "exit status is unavailable") {
		// The sandbox ended before runsc wait reached it; its boot log
		// says how, as for a sandbox.
		res.WaitLost = true
		status, ok := runsc.BootExitStatus(logDir)
		if !ok {
			status, res.StatusLost = -1, true
		}
		res.ExitStatus = status
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	var w struct {
		ExitStatus int `json:"exitStatus"`
	}
	if err := json.Unmarshal(out, &w); err != nil {
		return nil, fmt.Errorf("runsc wait: %q: %w", out, err)
	}
	res.ExitStatus = w.ExitStatus
	return res, nil
}

// RunOneShot runs c with a single `runsc run` (with the same flags as
// Run's create), which creates, starts, waits for and deletes the container
// in one process, and removes its bundle, overlay store and boot log.
func (b *Runner) RunOneShot(ctx context.Context, c Container) (*Result, error) {
	res := &Result{Began: time.Now()}
	bundle, flags, err := b.prepare(c)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(filepath.Dir(bundle))
	err = b.boot(ctx, "run", c, flags, bundle, filepath.Join(filepath.Dir(bundle), "runsc-log")).Run()
	res.Exited = time.Now()
	res.Deleted = res.Exited
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		res.ExitStatus = ee.ExitCode()
	case err != nil:
		return nil, fmt.Errorf("runsc run %s: %w", c.ID, err)
	}
	return res, nil
}

// Close deletes whatever container is left under the runner's root, and
// removes its cgroups and its directory.
func (b *Runner) Close(ctx context.Context) error {
	return runsc.CleanDir(ctx, b.runsc, b.cfg.Dir, b.cfg.CgroupParent)
}
