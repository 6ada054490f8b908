package redismodes

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

// TestSubmitWaitsForReplicas submits to a Sentinel set with one replica.
// Asking for two replicas, a submission fails (the producer's error and
// the API's 503 not_replicated say the job may be lost and that the same
// idempotency key is safe to resubmit); asking for one, the same
// submission, resubmitted with its key, succeeds and is the same job.
func TestSubmitWaitsForReplicas(t *testing.T) {
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 1})
	ctx := context.Background()
	redisCfg := func(n int) jobs.Config {
		return config(t, jobs.Config{RedisSentinels: set.SentinelAddrs(), RedisMasterName: set.MasterName, RedisWaitReplicas: n, RedisWaitTimeout: 500 * time.Millisecond})
	}
	sub := func(key string) jobs.Submission {
		return jobs.Submission{Script: file("job.sh", "echo hi\n"), IdempotencyKey: key}
	}
	const wantMsg = "1 of 2 replicas have it after 500ms; it may be lost if Redis fails over now; submitting it again with the same idempotency key is safe"

	two, err := jobs.NewClient(redisCfg(2), env.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer two.Close()
	_, err = two.Enqueue(ctx, sub("k1"))
	if !errors.Is(err, jobs.ErrNotReplicated) || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("producer, 2 replicas of 1: %v, want ErrNotReplicated saying %q", err, wantMsg)
	}

	url, toks := sandqtest.API(t, redisCfg(2), env.store, nil, map[string]api.Tenant{"acme": {Queues: []string{jobs.DefaultQueue}}})
	acme, err := api.NewClient(url, toks["acme"])
	if err != nil {
		t.Fatal(err)
	}
	defer acme.Close()
	var se *api.StatusError
	if _, err := acme.Enqueue(ctx, sub("k2")); !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable || se.Err.Code != "not_replicated" || !strings.Contains(se.Err.Message, wantMsg) {
		t.Fatalf("API, 2 replicas of 1: %v, want 503 not_replicated", err)
	}
	if se.Err.JobID == "" {
		t.Errorf("API, 2 replicas of 1: the error names no job_id: %+v", se.Err)
	}
	// Without a key, resubmitting is not safe: the error says to look the
	// job up first, and names it.
	keyless := sub("k3")
	keyless.IdempotencyKey = ""
	_, err = two.Enqueue(ctx, keyless)
	var nr *jobs.NotReplicatedError
	if !errors.As(err, &nr) || nr.JobID == "" || !strings.Contains(err.Error(), "job "+nr.JobID+" may still run: look it up before submitting it again") {
		t.Errorf("producer, no idempotency key: %v; want the job named and a look-up asked for", err)
	}

	one, err := jobs.NewClient(redisCfg(1), env.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	enq, err := one.Enqueue(ctx, sub("k1"))
	if err != nil {
		t.Fatalf("resubmitted with 1 replica of 1: %v", err)
	}
	if !enq.Existing {
		t.Errorf("resubmission made a new job %s; want the one enqueued before", enq.ID)
	}
	if st, err := one.Status(ctx, enq.ID); err != nil || st.State != jobs.StatePending {
		t.Errorf("job %s: %+v %v, want pending", enq.ID, st, err)
	}
}
