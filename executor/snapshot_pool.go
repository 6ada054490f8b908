package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A restore pool keeps sandboxes of one template created and restored ahead
// of demand, their launchers waiting for a request, so that a job that
// takes one has neither `runsc create` nor `runsc restore` on its path:
// only the download of its files and the request. Like a warm sandbox, a
// pooled one holds nothing of any job until one takes it, serves that job
// once, and is replaced when released; only jobs of the pool's shape (the
// template's, and the pool's output, task and log limits, which are fixed
// when the container is made) take one.
//
// An idle pooled sandbox holds the template's memory (its checkpoint's
// size, roughly) outside any job's limit, and its launcher polls for the
// request every 20ms.

// MaxSnapshotPool bounds a template's pool.
const MaxSnapshotPool = MaxWarm

type restorePool struct {
	p     *SnapshotRunner
	t     *snapshotTemplate
	shape Spec
	*pool[*restoredSandbox]
}

// StartPools keeps size sandboxes restored ahead of demand for each of the
// runner's templates, with limits as the pools' shape (its Memory and Disk
// are the template's; its Timeout is not used). Close stops them.
func (p *SnapshotRunner) StartPools(limits Limits, size int) error {
	if size < 1 || size > MaxSnapshotPool {
		return fmt.Errorf("snapshot pools: %d: want 1 to %d", size, MaxSnapshotPool)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pools == nil {
		p.pools = map[*snapshotTemplate]*restorePool{}
	}
	for _, t := range p.templates {
		if p.pools[t] != nil {
			continue
		}
		l := limits
		l.Memory, l.Disk = t.Info.Memory, t.Info.Disk
		if l.Timeout <= 0 {
			l.Timeout = time.Hour
		}
		shape := Spec{Name: "pool", Image: t.rootfs, Env: t.Info.Env, UID: t.Info.UID, GID: t.Info.GID, Limits: l,
			Args: []string{t.Info.Python, JobMount + "/job.py"}}
		if err := checkSpec(shape); err != nil {
			return fmt.Errorf("snapshot pools: %w", err)
		}
		r := &restorePool{p: p, t: t, shape: shape}
		r.pool = newPool(size, r.make, r.failed)
		// A quarantined template's pool makes no more.
		r.paused = t.quarantined.Load
		p.pools[t] = r
		r.start()
	}
	return nil
}

// failed handles a sandbox the pool could not make: a failed restore
// quarantines the template and ends the pool; anything else is logged and
// tried again after 5s.
func (r *restorePool) failed(err error, _ int) (time.Duration, bool) {
	if errors.Is(err, errRestore) {
		r.p.quarantine(r.t, err)
		return 0, true
	}
	r.p.logger.Error("making a restored sandbox for the pool", "template", r.t.Dir, "err", err)
	return 5 * time.Second, false
}

// make prepares, creates and restores one sandbox of the pool's shape.
func (r *restorePool) make(ctx context.Context) (*restoredSandbox, error) {
	sb, err := r.p.prepareRestore(ctx, r.t, r.shape)
	if err != nil {
		return nil, err
	}
	if err := sb.createAndRestore(ctx); err != nil {
		return nil, errors.Join(err, sb.Release(ctx))
	}
	sb.pooled = true
	return sb, nil
}

// fromPool returns a pooled sandbox of t given to the job of spec, or nil
// when t has no pool, the job is not of its shape or none is ready.
func (p *SnapshotRunner) fromPool(t *snapshotTemplate, spec Spec) Sandbox {
	p.mu.RLock()
	r := p.pools[t]
	p.mu.RUnlock()
	if r == nil {
		return nil
	}
	a, b := spec.Limits, r.shape.Limits
	// The timeout and the CPU limit are the job's own, set as it starts.
	a.Timeout, b.Timeout = 0, 0
	a.CPUs, b.CPUs = 0, 0
	if a != b || spec.Egress != nil {
		// A networked job's sandbox needs its own namespace and proxy
		// session from the start; pooled ones have neither.
		return nil
	}
	req, err := json.Marshal(snapshotRequest{Argv: spec.Args, Env: spec.Env, Cwd: WorkDir})
	if err != nil {
		return nil
	}
	sb, ok := r.take()
	if !ok {
		r.misses.Add(1)
		return nil
	}
	r.hits.Add(1)
	sb.mu.Lock()
	sb.spec.Name, sb.spec.Limits.Timeout, sb.spec.Limits.CPUs = spec.Name, spec.Limits.Timeout, spec.Limits.CPUs
	sb.restore.job, sb.restore.request = spec, req
	sb.logger = p.runsc.logger.With("sandbox", sb.id, "job_id", spec.Name)
	sb.createdAt = time.Now()
	sb.mu.Unlock()
	return &pooledSandbox{restoredSandbox: sb, pool: r}
}

// pooledSandbox is a sandbox a pool handed out: releasing it has the pool
// restore another.
type pooledSandbox struct {
	*restoredSandbox
	pool *restorePool
}

func (s *pooledSandbox) Release(ctx context.Context) error {
	err := s.restoredSandbox.Release(ctx)
	s.pool.refill()
	return err
}

// PoolStats are, summed over the templates' pools, the sandboxes ready, the
// jobs that took one (hits) and those of a pool's shape that found none
// ready (misses).
func (p *SnapshotRunner) PoolStats() (ready int, hits, misses int64) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, r := range p.pools {
		ready += r.readyCount()
		hits += r.hits.Load()
		misses += r.misses.Load()
	}
	return ready, hits, misses
}

// Close stops the pools and releases the sandboxes still waiting in them.
// It does not close the wrapped runner; sandboxes handed out are their
// jobs' to release.
func (p *SnapshotRunner) Close(ctx context.Context) error {
	p.mu.Lock()
	pools := p.pools
	p.pools = nil
	p.mu.Unlock()
	var errs []error
	for _, r := range pools {
		errs = append(errs, r.close(ctx))
	}
	return errors.Join(errs...)
}
