package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// sandboxFlags are runsc's global flags for one sandbox, the same on every
// call about it: its runsc root, the platform, its network (none, or the
// sandbox's own namespace) and the size-capped overlay that takes every write
// to its root filesystem.
func sandboxFlags(root, platform, overlayDir string, disk int64, networked bool, extra []string) []string {
	network := "--network=none"
	if networked {
		network = "--network=sandbox"
	}
	f := []string{
		"--root=" + root,
		"--platform=" + platform,
		network,
		fmt.Sprintf("--overlay2=root:dir=%s,size=%d", overlayDir, disk),
	}
	return append(f, extra...)
}

// BareConfig configures a BareRunner.
type BareConfig struct {
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
	// ExtraFlags are added to every runsc invocation, as RunscConfig's.
	ExtraFlags []string
}

// BareRunner runs bare containers: each made exactly as a sandbox's
// container is — the same OCI spec and the same runsc global flags and
// calls (create, start, wait, delete) — but with nothing else a sandbox
// has around it: no scratch-space layout, outputs filesystem, log capture,
// limit timer, network or cleanup stack. It is the floor `sandq bench`
// measures sandq against; jobs never run in one.
type BareRunner struct {
	cfg   BareConfig
	runsc string
}

// BareContainer is one container to run: what runs, and the host
// directories mounted at InputsMount, JobMount and OutputsMount.
type BareContainer struct {
	// ID names the container; it must be unique under the runner.
	ID   string
	Spec Spec
	// InputsDir, JobDir and OutputsDir are bind-mounted as a sandbox's are.
	InputsDir, JobDir, OutputsDir string
	// Stdout and Stderr receive the process's output; nil discards it.
	Stdout, Stderr *os.File
}

// BareResult is how a bare container ended, and when each call returned.
type BareResult struct {
	// ExitStatus is the process's exit status (128+n for signal n).
	ExitStatus int
	// Began is when the bundle was written; Started when runsc start
	// returned (for RunOneShot: zero); Exited when runsc wait returned;
	// Deleted when the container was gone.
	Began, Started, Exited, Deleted time.Time
	// WaitLost is set when runsc wait could not tell the exit status: the
	// sandbox had already exited when wait reached it (see bootlog.go).
	// ExitStatus is then read from the sandbox's boot log, as a sandbox's
	// is, or is -1 (StatusLost) when the log does not say.
	WaitLost, StatusLost bool
}

// NewBareRunner checks that the runsc binary exists and makes Dir.
func NewBareRunner(cfg BareConfig) (*BareRunner, error) {
	if cfg.Runsc == "" {
		cfg.Runsc = "runsc"
	}
	if cfg.Platform == "" {
		cfg.Platform = "systrap"
	}
	if cfg.Dir == "" {
		return nil, errors.New("bare runner: no directory")
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/sandq/bare-" + randomHex(6)
	}
	bin, err := exec.LookPath(cfg.Runsc)
	if err != nil {
		return nil, fmt.Errorf("%w: runsc not found (%s): %w", ErrRunsc, cfg.Runsc, err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "containers"), 0o700); err != nil {
		return nil, fmt.Errorf("bare runner dir: %w", err)
	}
	return &BareRunner{cfg: cfg, runsc: bin}, nil
}

// Root is the runsc --root of the runner's containers.
func (b *BareRunner) Root() string { return filepath.Join(b.cfg.Dir, "runsc") }

// Flags are the runsc global flags of a container whose overlay store is
// overlayDir, capped at disk bytes: those a sandbox without network gets.
func (b *BareRunner) Flags(overlayDir string, disk int64) []string {
	return sandboxFlags(b.Root(), b.cfg.Platform, overlayDir, disk, false, b.cfg.ExtraFlags)
}

// CreateFlags are the flags runsc create gets besides Flags: the boot
// process's log in logDir, as a sandbox's (see bootlog.go).
func (b *BareRunner) CreateFlags(logDir string) []string { return bootLogFlags(logDir) }

// prepare writes the container's bundle and makes its overlay and boot log
// directories.
func (b *BareRunner) prepare(c BareContainer) (bundle string, flags []string, err error) {
	if err := checkSpec(c.Spec); err != nil {
		return "", nil, err
	}
	if c.ID == "" {
		return "", nil, errors.New("bare container: no ID")
	}
	dir := filepath.Join(b.cfg.Dir, "containers", c.ID)
	bundle = filepath.Join(dir, "bundle")
	overlay := filepath.Join(dir, "overlay")
	for _, d := range []string{bundle, overlay, filepath.Join(dir, "runsc-log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", nil, fmt.Errorf("bare container %s: %w", c.ID, err)
		}
	}
	spec := ociSpec(c.Spec, c.InputsDir, c.JobDir, c.OutputsDir, filepath.Join(b.cfg.CgroupParent, c.ID), "")
	js, err := json.Marshal(spec)
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o600); err != nil {
		return "", nil, fmt.Errorf("bare container %s: bundle: %w", c.ID, err)
	}
	return bundle, b.Flags(overlay, c.Spec.Limits.Disk), nil
}

// runscCommand is a runsc command whose whole environment is a PATH: runsc
// gets nothing of the worker's own.
func runscCommand(ctx context.Context, bin string, flags []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, append(append([]string(nil), flags...), args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// runscOutput runs a runsc command and returns its standard output; a
// failure names the subcommand and carries what runsc wrote to stderr.
func runscOutput(cmd *exec.Cmd, subcommand string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", subcommand, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func (b *BareRunner) command(ctx context.Context, flags []string, args ...string) *exec.Cmd {
	return runscCommand(ctx, b.runsc, flags, args...)
}

func (b *BareRunner) call(ctx context.Context, flags []string, args ...string) ([]byte, error) {
	return runscOutput(b.command(ctx, flags, args...), args[0])
}

// Run runs c with runsc create (with the boot log flags), start, wait and
// delete --force, the calls a sandbox makes, and removes its bundle,
// overlay store and boot log.
func (b *BareRunner) Run(ctx context.Context, c BareContainer) (_ *BareResult, err error) {
	res := &BareResult{Began: time.Now()}
	bundle, flags, err := b.prepare(c)
	if err != nil {
		return nil, err
	}
	defer func() {
		_, derr := b.call(context.WithoutCancel(ctx), flags, "delete", "--force", c.ID)
		if derr != nil && isNotExist(derr) {
			derr = nil
		}
		res.Deleted = time.Now()
		err = errors.Join(err, derr, os.RemoveAll(filepath.Dir(bundle)))
	}()
	logDir := filepath.Join(filepath.Dir(bundle), "runsc-log")
	create := b.command(ctx, append(append([]string(nil), flags...), b.CreateFlags(logDir)...), "create", "--bundle", bundle, c.ID)
	if c.Stdout != nil {
		create.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		create.Stderr = c.Stderr
	}
	if err := create.Run(); err != nil {
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
		status, ok := bootExitStatus(logDir)
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
func (b *BareRunner) RunOneShot(ctx context.Context, c BareContainer) (*BareResult, error) {
	res := &BareResult{Began: time.Now()}
	bundle, flags, err := b.prepare(c)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(filepath.Dir(bundle))
	logDir := filepath.Join(filepath.Dir(bundle), "runsc-log")
	run := b.command(ctx, append(append([]string(nil), flags...), b.CreateFlags(logDir)...), "run", "--bundle", bundle, c.ID)
	if c.Stdout != nil {
		run.Stdout = c.Stdout
	}
	if c.Stderr != nil {
		run.Stderr = c.Stderr
	}
	err = run.Run()
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
func (b *BareRunner) Close(ctx context.Context) error {
	return cleanWorkerDir(ctx, b.runsc, b.cfg.Dir, b.cfg.CgroupParent)
}
