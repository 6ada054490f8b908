package bench

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandq/sandq/jobs"
)

// cpStall is how long a row may go without a job finishing before the
// bench gives up on it.
const cpStall = 2 * time.Minute

// cpJob is one submitted job: its ID and when its clock started (its
// scheduled send time open-loop, else when it was sent).
type cpJob struct {
	id    string
	start time.Time
}

// cpReading is everything read before and after a row's jobs.
type cpReading struct {
	redis           redisStats
	producer, works s3Counts
	minio, self     time.Duration
}

func (e *cpEnv) read(ctx context.Context, workers *s3Counter) (cpReading, error) {
	var r cpReading
	var err error
	if r.redis, err = readRedisStats(ctx, e.rdb); err != nil {
		return r, err
	}
	r.producer, r.works = e.producer.read(), workers.read()
	if r.minio, err = processCPU(e.stack.PID("minio")); err != nil {
		return r, fmt.Errorf("minio: %w", err)
	}
	r.self, err = selfCPU()
	return r, err
}

// row runs one row: the shape's workers, watched idle, then fed the jobs
// until every one is done.
func (e *cpEnv) row(ctx context.Context, shape cpShape) (CPRow, error) {
	e.seq++
	queue := fmt.Sprintf("bench-cp-w%d-c%d-%d", shape.workers, shape.concurrency, e.seq)
	row := CPRow{Workers: shape.workers, Concurrency: shape.concurrency, TaskCheckInterval: shape.interval.String()}
	counter := newS3Counter()
	stop, err := e.startWorkers(ctx, queue, shape, counter)
	if err != nil {
		return row, err
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	if row.Idle, err = e.idle(ctx); err != nil {
		return row, err
	}
	before, err := e.read(ctx, counter)
	if err != nil {
		return row, err
	}
	baseline := e.arrived()
	sent, submitted, err := e.send(ctx, queue)
	if err != nil {
		return row, err
	}
	end, err := e.awaitAll(ctx, queue, baseline, len(sent))
	if err != nil {
		return row, err
	}
	after, err := e.read(ctx, counter)
	if err != nil {
		return row, err
	}
	// Stopping waits for the handlers, so every job's task is completed
	// before the results are read.
	stop()
	stopped = true
	first := sent[0].start
	for _, j := range sent {
		if j.start.Before(first) {
			first = j.start
		}
	}
	if err := e.results(queue, sent, &row); err != nil {
		return row, err
	}
	if e.hooks != nil {
		// The last webhook's arrival, not the sweep that saw it.
		end = first
		for _, j := range sent {
			if at, ok := e.hooks.arrival(j.id); ok && at.After(end) {
				end = at
			}
		}
	}
	row.Jobs = len(sent)
	row.Seconds = round2(end.Sub(first).Seconds())
	row.JobsPerSecond = round2(float64(row.Succeeded) / end.Sub(first).Seconds())
	row.SubmitSeconds = round2(submitted.Sub(first).Seconds())
	row.SubmittedPerSecond = round2(float64(len(sent)) / submitted.Sub(first).Seconds())
	row.costs(before, after, end.Sub(first))
	return row, nil
}

// idle watches the row's workers idle for the idle window: what Redis
// spends on workers waiting for jobs.
func (e *cpEnv) idle(ctx context.Context) (*CPIdle, error) {
	if e.o.IdleWindow <= 0 {
		return nil, nil
	}
	a, err := readRedisStats(ctx, e.rdb)
	if err != nil {
		return nil, err
	}
	if err := sleepUntil(ctx, time.Now().Add(e.o.IdleWindow)); err != nil {
		return nil, err
	}
	b, err := readRedisStats(ctx, e.rdb)
	if err != nil {
		return nil, err
	}
	d := b.since(a)
	secs := b.at.Sub(a.at).Seconds()
	return &CPIdle{Seconds: round2(secs), CallsPerSecond: round1(float64(d.totalCalls()) / secs), CPUPercent: round2(d.cpu / secs * 100)}, nil
}

// arrived is how many webhooks the receiver has had so far (0 without).
func (e *cpEnv) arrived() int {
	if e.hooks == nil {
		return 0
	}
	return e.hooks.count()
}

// send submits the row's jobs, open-loop or as fast as the producers can,
// and returns them with when the last submission returned. Any refused
// submission fails the row.
func (e *cpEnv) send(ctx context.Context, queue string) ([]cpJob, time.Time, error) {
	if e.o.Rate > 0 {
		return e.sendOpenLoop(ctx, queue)
	}
	var (
		mu    sync.Mutex
		sent  []cpJob
		errs  []error
		next  atomic.Int64
		wg    sync.WaitGroup
		until time.Time
	)
	began := time.Now()
	if e.o.Duration > 0 {
		until = began.Add(e.o.Duration)
	}
	for range e.o.Producers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if until.IsZero() && next.Add(1) > int64(e.o.Jobs) || !until.IsZero() && time.Now().After(until) {
					return
				}
				at := time.Now()
				enq, err := e.client.Enqueue(ctx, e.submission(queue))
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("enqueue: %w", err))
				} else {
					sent = append(sent, cpJob{id: enq.ID, start: at})
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return sentOrErr(ctx, sent, errs)
}

// sendOpenLoop sends each job at its time on the seeded schedule, whether
// or not the ones before it have returned.
func (e *cpEnv) sendOpenLoop(ctx context.Context, queue string) ([]cpJob, time.Time, error) {
	n := e.o.Jobs
	if e.o.Duration > 0 {
		n = int(math.Ceil(e.o.Rate * e.o.Duration.Seconds()))
	}
	offsets := schedule(n, e.o.Rate, e.o.Seed)
	began := time.Now()
	jobsSent := make([]cpJob, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, off := range offsets {
		at := began.Add(off)
		if err := sleepUntil(ctx, at); err != nil {
			break
		}
		wg.Go(func() {
			enq, err := e.client.Enqueue(ctx, e.submission(queue))
			if err != nil {
				errs[i] = fmt.Errorf("enqueue: %w", err)
				return
			}
			jobsSent[i] = cpJob{id: enq.ID, start: at}
		})
	}
	wg.Wait()
	var sent []cpJob
	var failed []error
	for i, j := range jobsSent {
		if errs[i] != nil {
			failed = append(failed, errs[i])
		} else if j.id != "" {
			sent = append(sent, j)
		}
	}
	return sentOrErr(ctx, sent, failed)
}

func sentOrErr(ctx context.Context, sent []cpJob, errs []error) ([]cpJob, time.Time, error) {
	done := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, done, err
	}
	if len(errs) > 0 {
		return nil, done, fmt.Errorf("%d submissions refused, the first: %w", len(errs), errs[0])
	}
	if len(sent) == 0 {
		return nil, done, fmt.Errorf("no job was sent")
	}
	return sent, done, nil
}

// awaitAll waits until m jobs are done: told by their webhooks (the
// receiver's count past baseline), or without webhooks by a sweep of the
// queue's counts every sweepInterval. It gives up when no job finished for
// cpStall.
func (e *cpEnv) awaitAll(ctx context.Context, queue string, baseline, m int) (time.Time, error) {
	poll := 5 * time.Millisecond
	if e.hooks == nil {
		poll = sweepInterval
	}
	last, lastChange := -1, time.Now()
	for {
		var done int
		if e.hooks != nil {
			done = e.hooks.count() - baseline
		} else {
			info, err := e.insp.GetQueueInfo(queue)
			if err != nil {
				return time.Time{}, fmt.Errorf("queue %s: %w", queue, err)
			}
			done = info.Completed + info.Archived
		}
		now := time.Now()
		if done >= m {
			return now, nil
		}
		if done != last {
			last, lastChange = done, now
		} else if now.Sub(lastChange) > cpStall {
			return time.Time{}, fmt.Errorf("queue %s: %d of %d jobs done, none more for %s", queue, done, m, cpStall)
		}
		if err := sleepUntil(ctx, now.Add(poll)); err != nil {
			return time.Time{}, err
		}
	}
}

// results checks every job's result and fills the row's counts and time
// distributions.
func (e *cpEnv) results(queue string, sent []cpJob, row *CPRow) error {
	byID := make(map[string]*jobs.Result, len(sent))
	seen := 0
	err := eachResult(e.insp, queue, func(id string, res *jobs.Result, err error) {
		seen++
		if err == nil {
			err = e.checkResult(res)
		}
		if err != nil {
			row.Failed++
			if len(row.failures) < 10 {
				row.failures = append(row.failures, err.Error())
			}
			return
		}
		row.Succeeded++
		if res.Attempt > 1 {
			row.Retried++
		}
		byID[id] = res
	})
	if err != nil {
		return err
	}
	if seen != len(sent) {
		return fmt.Errorf("queue %s: %d results for %d jobs", queue, seen, len(sent))
	}
	var lat, wait, inWorker []float64
	for _, j := range sent {
		res, ok := byID[j.id]
		if !ok {
			continue
		}
		t := res.Timings
		wait = append(wait, float64(t.QueueWaitMS))
		inWorker = append(inWorker, float64(t.TotalInWorkerMS))
		if e.hooks != nil {
			at, ok := e.hooks.arrival(j.id)
			if !ok {
				return fmt.Errorf("job %s: no webhook", j.id)
			}
			lat = append(lat, ms(at.Sub(j.start)))
		} else {
			upload := res.SubmittedAt.Add(time.Duration(t.QueueWaitMS+t.TotalInWorkerMS) * time.Millisecond)
			lat = append(lat, ms(upload.Sub(j.start)))
		}
	}
	row.Latency, row.QueueWait, row.InWorker = dist(lat), dist(wait), dist(inWorker)
	return nil
}

// costs fills the row's per-job costs from the readings around its jobs.
func (row *CPRow) costs(before, after cpReading, wall time.Duration) {
	jobs := float64(row.Jobs)
	per := func(v float64) float64 { return round1(v / jobs) }
	pct := func(cpu float64) float64 { return round1(cpu / wall.Seconds() * 100) }
	r := after.redis.since(before.redis)
	row.Redis = CPRedis{
		CallsPerJob: per(float64(r.totalCalls())), NetInBytesPerJob: per(float64(r.netIn)), NetOutBytesPerJob: per(float64(r.netOut)),
		CPUMsPerJob: round2(r.cpu * 1000 / jobs), CPUPercent: pct(r.cpu), MemoryBytesPerJob: per(float64(r.memory)),
	}
	if r.cpu > 0 {
		row.Redis.CPUBoundJobsPerSecond = math.Round(jobs / r.cpu)
	}
	for name, n := range r.calls {
		row.Redis.Commands = append(row.Redis.Commands, CPCommand{Name: name, CallsPerJob: round2(float64(n) / jobs), UsecPerJob: per(float64(r.usec[name]))})
		if name == "eval" || name == "evalsha" || name == "fcall" {
			row.Redis.ScriptCallsPerJob += round2(float64(n) / jobs)
		}
	}
	sortCommands(row.Redis.Commands)
	row.S3Producer = s3Doc(after.producer.since(before.producer), jobs)
	row.S3Workers = s3Doc(after.works.since(before.works), jobs)
	minio := (after.minio - before.minio).Seconds()
	self := (after.self - before.self).Seconds()
	row.MinioCPUMsPerJob, row.MinioCPUPercent = round2(minio*1000/jobs), pct(minio)
	row.BenchCPUMsPerJob, row.BenchCPUPercent = round2(self*1000/jobs), pct(self)
}

func s3Doc(c s3Counts, jobs float64) CPS3 {
	d := CPS3{RequestsPerJob: round2(float64(c.requests) / jobs), ByMethod: map[string]float64{},
		SentBytesPerJob: round1(float64(c.sent) / jobs), ReceivedBytesPerJob: round1(float64(c.received) / jobs), Errors: c.errors}
	for m, n := range c.byMethod {
		d.ByMethod[m] = round2(float64(n) / jobs)
	}
	return d
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
