package multihost

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// waitDone waits until at least k jobs of queue q are done (completed or
// archived).
func waitDone(t *testing.T, insp *asynq.Inspector, q string, k int, within time.Duration) int {
	t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		info, err := insp.GetQueueInfo(q)
		if err == nil && info.Completed+info.Archived >= k {
			return info.Completed + info.Archived
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d jobs of %s done after %s (%v)", k, q, within, err)
		}
	}
}

// checkOutputs downloads every job's output through its presigned link:
// each holds the job's number.
func (sc *scenario) checkOutputs() {
	t := sc.t
	t.Helper()
	for i, j := range sc.jobs {
		if j.res == nil || len(j.res.Outputs) != 1 {
			t.Errorf("job %s: outputs %+v", j.id, j.res)
			continue
		}
		_, body := testenv.Fetch(t, j.res.Outputs[0].URL)
		if want := strconv.Itoa(i) + "\n"; string(body) != want {
			t.Errorf("job %s: output %q, want %q", j.id, body, want)
		}
	}
	sc.figure("all %d jobs' output links downloaded with the right content", len(sc.jobs))
}

// 4. The Redis primary is killed (SIGKILL) under load; the sentinels
// promote a replica, and the workers and producers, which reach Redis
// through the sentinels, go on with it.
func TestSentinelFailover(t *testing.T) {
	t.Parallel() // mostly waiting for leases to lapse
	sc := newScenario(t, 4, "Redis Sentinel failover (primary killed) under load", "mh-sentinel")
	// Two replicas, as docs/scaling.md asks: with --redis-wait-replicas 1,
	// one must be left to confirm writes once the other is promoted.
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Host: env.bridge.Addr.String(), Replicas: 2, AppendOnly: true})
	sc.cfg.RedisAddr = ""
	sc.cfg.RedisURL = "redis+sentinel://" + strings.Join(set.SentinelAddrs(), ",") + "/" + set.MasterName
	// As docs/scaling.md says to run Sentinel: producer and workers count a
	// submission or a result as written once a replica has it.
	sc.cfg.RedisWaitReplicas = 1
	n := ciOrFull(30, 300)
	for i := 1; i <= 3; i++ {
		sc.host(fmt.Sprintf("h%d", i), sc.queue)
	}
	c := sc.producer(sc.queue)
	insp := sc.inspector()
	began := time.Now()
	sc.submit(c, n, 1)
	done := waitDone(t, insp, sc.queue, n/4, 5*time.Minute)
	// Submissions go on through the switch, each retried with its
	// idempotency key until Redis takes it.
	through := make(chan []*tracked, 1)
	go func() { through <- sc.submitThrough(c, ciOrFull(6, 30), time.Minute) }()
	old := set.KillPrimary(t)
	killedAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	primary, err := set.WaitFailover(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	sc.figure("primary %s killed with %d of %d jobs done; the sentinels promoted %s in %s", old, done, n, primary, time.Since(killedAt).Round(100*time.Millisecond))
	sc.jobs = append(sc.jobs, <-through...)
	per := sc.finish(resultsWithin())
	sc.figure("every job done %s after the kill", time.Since(killedAt).Round(time.Second))
	sc.figure("%d jobs (1 s each) in %s across the failover; per host %v", len(sc.jobs), time.Since(began).Round(time.Second), per)
}

// 5. One node of a 4-node distributed MinIO is killed under load: with
// MinIO's default parity the set still reads and writes, and every job
// succeeds with outputs whose links download.
func TestMinioNodeKilled(t *testing.T) {
	sc := newScenario(t, 5, "a distributed-MinIO node killed under load", "mh-minio")
	set := testenv.MinioDistributed(t, testenv.MinioSetOptions{Host: env.bridge.Addr.String(), Nodes: 4})
	srv := set.Server()
	sc.cfg.Storage = storage.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Region: srv.Region, Bucket: bucket}
	var err error
	if sc.store, err = storage.New(sc.cfg.Storage); err != nil {
		t.Fatal(err)
	}
	if err := sc.store.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := ciOrFull(30, 300)
	for i := 1; i <= 3; i++ {
		sc.host(fmt.Sprintf("h%d", i), sc.queue)
	}
	c := sc.producer(sc.queue)
	insp := sc.inspector()
	began := time.Now()
	sc.submit(c, n, 1)
	done := waitDone(t, insp, sc.queue, n/4, 5*time.Minute)
	set.Kill(t, 1)
	sc.figure("MinIO node 1 of 4 killed with %d of %d jobs done", done, n)
	per := sc.finish(resultsWithin())
	sc.checkOutputs()
	sc.figure("%d jobs (1 s each) in %s with a node down; per host %v", n, time.Since(began).Round(time.Second), per)
}

// submitThrough submits n jobs one after another while Redis may be
// failing over: each is retried with its idempotency key until Redis
// takes it, for up to within. Errors on the way are expected (Redis is
// away); a wrong answer is not: a key's job must have the key's ID.
func (sc *scenario) submitThrough(c *jobs.Client, n int, within time.Duration) []*tracked {
	var out []*tracked
	errs := map[string]int{}
	for i := range n {
		tag := fmt.Sprintf("%s-through-%d", sc.queue, i)
		sub := sc.submission(tag, i, 1)
		sub.IdempotencyKey = tag
		for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
			enq, err := c.Enqueue(context.Background(), sub)
			if err == nil {
				if want := jobs.IdempotentJobID("", sc.queue, tag); enq.ID != want {
					sc.t.Errorf("submission %s answered with job %s, want %s", tag, enq.ID, want)
				}
				out = append(out, &tracked{id: enq.ID, queue: enq.Queue, tag: tag})
				break
			}
			errs[shortErr(err)]++
			if time.Now().After(deadline) {
				sc.t.Errorf("submission %s not taken within %s: %v", tag, within, err)
				break
			}
		}
	}
	sc.figure("%d jobs submitted through the switch (retried with their idempotency keys); errors on the way: %v", len(out), errs)
	return out
}

// shortErr names an error by its first words, to count them.
func shortErr(err error) string {
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}
