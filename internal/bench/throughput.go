package bench

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/jobs"
)

// throughput drains ThroughputJobs pre-queued jobs with a worker of
// concurrency c, then runs as many bare runsc containers from a plain loop
// of c goroutines, then drains again in each other mode (e.modes): with
// warm sandboxes, restored, restored with a pool.
func (e *env) throughput(ctx context.Context, v variant, c int) (ThroughputRow, error) {
	m := e.o.ThroughputJobs
	row := ThroughputRow{Concurrency: c, Jobs: m}

	modes := e.modes(v)
	d, err := measured(ctx, e, phaseName(v, fmt.Sprintf("drain at concurrency %d", c), modes[0]), m, func() (drained, error) { return e.drainSandq(ctx, v, c, modes[0]) })
	if err != nil {
		return row, err
	}
	row.SandqSucceeded, row.SandqFailed, row.SandqRetried = d.ok, d.failed, d.retried
	row.SandqSeconds, row.SandqJobsPerSecond = d.seconds, d.jobsPerSecond

	// Bare runsc, the same number of jobs at the same parallelism.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, m)
	var ok, lost atomic.Int64
	began := time.Now()
	for range c {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= m {
					return
				}
				r, err := e.runBare(ctx, v, false)
				if err != nil {
					errs[i] = err
					continue
				}
				ok.Add(1)
				if r.waitLost {
					lost.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	if err := errJobs(errs, m); err != nil {
		return row, fmt.Errorf("bare runsc: %w", err)
	}
	row.BareSucceeded, row.BareWaitLost = int(ok.Load()), int(lost.Load())
	row.BareSeconds = math.Round(elapsed.Seconds()*100) / 100
	row.BareJobsPerSecond = math.Round(float64(m)/elapsed.Seconds()*100) / 100
	ratio := func(jps float64) float64 {
		if row.BareJobsPerSecond <= 0 {
			return 0
		}
		return math.Round(jps/row.BareJobsPerSecond*1000) / 1000
	}
	row.Ratio = ratio(row.SandqJobsPerSecond)

	// sandq again, in each other mode.
	for _, md := range modes[1:] {
		d, err := measured(ctx, e, phaseName(v, fmt.Sprintf("drain at concurrency %d", c), md), m, func() (drained, error) { return e.drainSandq(ctx, v, c, md) })
		if err != nil {
			return row, fmt.Errorf("%s: %w", md.what, err)
		}
		started := d.warm
		if md.snapshots {
			started = d.restored
		}
		drain := &WarmDrain{Succeeded: d.ok, Failed: d.failed, Retried: d.retried, Started: started,
			Seconds: d.seconds, JobsPerSecond: d.jobsPerSecond, Ratio: ratio(d.jobsPerSecond)}
		switch md.key {
		case modeWarm:
			row.Warm = drain
		case modeRestored:
			row.Restored = drain
		case modeRestoredPool:
			row.RestoredPool = drain
		}
	}
	return row, nil
}

// drained is one drain by sandq.
type drained struct {
	ok, failed, retried, warm, restored int
	seconds, jobsPerSecond              float64
}

// drainSandq queues ThroughputJobs jobs (no webhooks), then makes a worker
// of concurrency c in mode m and times it from its start until every job
// is done. The worker is made before the clock starts: a worker with
// snapshot templates makes or finds its image's template then, which is
// done once per image and runsc, not per job. Jobs that ran out of
// retries count in the time, not in the jobs.
func (e *env) drainSandq(ctx context.Context, v variant, c int, m mode) (drained, error) {
	n := e.o.ThroughputJobs
	queue := fmt.Sprintf("bench-throughput-%s-c%d-%s-%d", v.name, c, m.key, e.next())
	var next atomic.Int64
	errs := make([]error, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				enq, err := e.client.Enqueue(ctx, v.submission(queue, ""))
				if err != nil {
					errs[i] = fmt.Errorf("enqueue: %w", err)
					continue
				}
				ids[i] = enq.ID
			}
		})
	}
	wg.Wait()
	var d drained
	if err := errJobs(errs, n); err != nil {
		return d, err
	}
	w, err := e.newWorker(v, queue, c, m)
	if err != nil {
		return d, err
	}
	began := time.Now()
	if err := w.Start(ctx); err != nil {
		w.Shutdown()
		return d, err
	}
	done, err := e.drain(ctx, queue, ids)
	elapsed := done.Sub(began)
	w.Shutdown()
	if err != nil {
		return d, err
	}
	if d, err = e.countResults(v, queue, n); err != nil {
		return d, err
	}
	d.seconds = math.Round(elapsed.Seconds()*100) / 100
	d.jobsPerSecond = math.Round(float64(d.ok)/elapsed.Seconds()*100) / 100
	return d, nil
}

// drain waits until every job of ids (all on queue) is completed or
// archived and returns when it saw the last one so. It learns of each end
// by push, as awaitResult does: it reads a job's task, and reads it again
// only when the worker says it is done (or every jobs.Config.PollInterval
// without a message), so that following the drain costs Redis a few reads
// per job, not a poll of the queue every few milliseconds.
func (e *env) drain(ctx context.Context, queue string, ids []string) (time.Time, error) {
	limit := time.Duration(len(ids)) * time.Minute
	deadline := time.Now().Add(limit)
	for _, id := range ids {
		if _, err := e.awaitTask(ctx, queue, id, deadline); err != nil {
			return time.Time{}, fmt.Errorf("queue %s: %w", queue, err)
		}
	}
	return time.Now(), nil
}

// countResults checks every finished job's result: completed ones should
// have succeeded with the expected output, archived ones ran out of
// retries. It returns how many succeeded, failed, were retried, ran in a
// warm sandbox and were restored from a snapshot template.
func (e *env) countResults(v variant, queue string, m int) (drained, error) {
	var d drained
	err := eachResult(e.insp, queue, func(_ string, res *jobs.Result, err error) {
		if err == nil {
			err = v.checkResult(res)
		}
		switch {
		case err != nil:
			d.failed++
			e.recordFailure(err)
		default:
			d.ok++
		}
		if res != nil && res.Attempt > 1 {
			d.retried++
		}
		if res != nil && res.Timings != nil && res.Timings.WarmStart {
			d.warm++
		}
		if res != nil && res.Timings != nil && res.Timings.StartMode == jobs.StartRestored {
			d.restored++
		}
	})
	if err != nil {
		return d, err
	}
	if d.ok+d.failed != m {
		return d, fmt.Errorf("queue %s: %d results for %d jobs", queue, d.ok+d.failed, m)
	}
	return d, nil
}

// eachResult calls fn with the result of every completed and archived
// task of queue (or why it could not be read), a page at a time.
func eachResult(insp *asynq.Inspector, queue string, fn func(id string, res *jobs.Result, err error)) error {
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){insp.ListCompletedTasks, insp.ListArchivedTasks} {
		for page := 1; ; page++ {
			infos, err := list(queue, asynq.Page(page), asynq.PageSize(100))
			if err != nil {
				return fmt.Errorf("queue %s: %w", queue, err)
			}
			for _, info := range infos {
				res, err := jobs.ParseResult(info.Result)
				if err != nil {
					err = fmt.Errorf("job %s (%s): result: %w", info.ID, info.LastErr, err)
				}
				fn(info.ID, res, err)
			}
			if len(infos) < 100 {
				break
			}
		}
	}
	return nil
}
