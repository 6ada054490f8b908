package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/runsc"
)

// lockDir takes an exclusive lock on dir/lock for the life of the process;
// the kernel drops it when the process dies, however it dies.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("worker lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("worker lock %s: %w", dir, err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// Sweep removes what workers that died on this host left behind: their
// containers, mounts, cgroups and scratch space. A worker directory whose
// lock can be taken belongs to a dead process; live workers' are skipped.
func (r *RunscRunner) Sweep(ctx context.Context) error {
	workers := filepath.Join(r.cfg.StateDir, "workers")
	ents, err := os.ReadDir(workers)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	var errs []error
	if r.net != nil {
		// Networks of dead workers anywhere on the host, whatever their
		// state directory.
		errs = append(errs, r.net.SweepDead())
	}
	for _, e := range ents {
		if !e.IsDir() || e.Name() == r.workerID {
			continue
		}
		dir := filepath.Join(workers, e.Name())
		lock, err := lockDir(dir)
		if err != nil {
			continue // alive
		}
		r.logger.Info("sweeping a dead worker's leftovers", "dead_worker", e.Name())
		if r.net != nil {
			// Its networks first: the lease files name its lock, which
			// goes with its directory.
			err = r.net.SweepWorker(e.Name())
		}
		if err == nil {
			err = runsc.CleanDir(ctx, r.runsc, dir, filepath.Join(r.cfg.CgroupParent, e.Name()))
		}
		lock.Close()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
