// Package sandqtest is the running sandq that the end-to-end suites
// (test/e2e, test/chaos) share, built on testenv: an Env (a temporary
// directory, Redis and MinIO, the test image, the sandq binary) that a
// TestMain starts with Start and tears down with Close; workers in-process
// on a real runsc runner (Worker); and the job API served in-process (API).
// Every resource is torn down by a cleanup stack, last made first.
//
// It imports the worker, the runner and the API server, so only tests
// outside those packages can use it; what every package's tests share is
// in testenv.
package sandqtest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
)

// Options say what an Env holds.
type Options struct {
	// Name names the suite: its temporary directory is /tmp/sandq-NAME-*.
	Name string
	// MinIO's root credentials.
	RootKey, RootSecret string
	// AppendOnly runs Redis with AOF persistence, as production does.
	AppendOnly bool
	// Programs the suite runs besides runsc, redis-server and minio.
	Programs []string
	// Keep keeps Dir after Close (to look at what a run left).
	Keep bool
}

// Env is a suite's environment.
type Env struct {
	// Dir holds everything of the suite: services' data and logs
	// (Dir/stack), state directories, the sandq binary.
	Dir    string
	Logger *slog.Logger
	// Image is the image jobs run on (testenv.TestImage), checked present.
	Image testenv.Image
	// Stack is Redis and MinIO.
	Stack *devstack.Stack

	keep    bool
	cleanup cleanup.Stack
	binOnce sync.Once
	bin     string
	binErr  error
}

// Start checks that this machine can run the suite (root, runsc, Redis,
// MinIO, opts.Programs, the image: each missing one is an error saying how
// to get it), makes Dir and starts Redis and MinIO. A failed start unwinds
// what it made.
func Start(ctx context.Context, o Options) (_ *Env, err error) {
	img := testenv.TestImage()
	if err := testenv.CheckBinaries(append([]string{"runsc", "redis-server", "minio"}, o.Programs...)...); err != nil {
		return nil, err
	}
	if err := testenv.CheckRoot(); err != nil {
		return nil, err
	}
	if err := img.Check(); err != nil {
		return nil, err
	}
	e := &Env{Logger: testenv.Logger(), Image: img, keep: o.Keep}
	defer e.cleanup.ReleaseOnError(ctx, &err)
	if e.Dir, err = os.MkdirTemp("", "sandq-"+o.Name+"-"); err != nil {
		return nil, err
	}
	e.cleanup.Add("suite directory", e.removeDir)
	e.Stack, err = testenv.StartServices(ctx, filepath.Join(e.Dir, "stack"), testenv.ServicesOptions{
		AccessKey: o.RootKey, SecretKey: o.RootSecret, AppendOnly: o.AppendOnly, Logger: e.Logger,
	})
	if err != nil {
		return nil, err
	}
	e.cleanup.Add("redis and minio", func(context.Context) error { return e.Stack.Stop() })
	return e, nil
}

// Defer adds a teardown step that Close runs, before those of what was
// added earlier (and before the services stop and Dir goes).
func (e *Env) Defer(name string, fn func(context.Context) error) { e.cleanup.Add(name, fn) }

// Close tears the environment down, last made first, and joins the errors.
func (e *Env) Close(ctx context.Context) error { return e.cleanup.Release(ctx) }

// removeDir removes Dir unless kept, and never through a mount: whatever
// is still mounted below keeps the directory, and is an error.
func (e *Env) removeDir(context.Context) error {
	if e.keep {
		return nil
	}
	mounts, err := runsc.MountsUnder(e.Dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("still mounted under %s, which is kept: %v", e.Dir, mounts)
	}
	return os.RemoveAll(e.Dir)
}

// Sandq builds the sandq binary into Dir the first time it is asked, and
// returns its path.
func (e *Env) Sandq() (string, error) {
	e.binOnce.Do(func() { e.bin, e.binErr = testenv.BuildSandq(e.Dir) })
	return e.bin, e.binErr
}
