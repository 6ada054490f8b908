package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
)

// Acknowledged means replicated. Redis replicates asynchronously: a write
// the primary acknowledged is lost if the primary dies before a replica
// has it and Sentinel promotes that replica. With RedisWaitReplicas > 0 a
// submission (and a worker's result) is reported written only once that
// many replicas have it: on one connection, sandq writes a marker and asks
// WAIT; replication is one ordered stream, so a replica that has the
// marker has every write acknowledged before it, the job's included.
//
// Not in Redis Cluster mode: a job's keys live on several primaries
// (asynq's under the queue's slot, the tenant's under the tenant's), each
// with its own replication stream; Validate refuses the combination.

// ErrNotReplicated marks a write that fewer replicas than
// Config.RedisWaitReplicas acknowledged in time.
var ErrNotReplicated = errors.New("not acknowledged by enough Redis replicas")

// replicaMarkerTTL keeps the marker key from lingering.
const replicaMarkerTTL = time.Minute

// AwaitReplicas returns once cfg.RedisWaitReplicas replicas have every
// write this process acknowledged before the call, or an error wrapping
// ErrNotReplicated after cfg.RedisWaitTimeout. what names the write for
// the message. With RedisWaitReplicas 0 it returns at once.
func AwaitReplicas(ctx context.Context, rdb redis.UniversalClient, cfg Config, what string) error {
	if cfg.RedisWaitReplicas <= 0 {
		return nil
	}
	client, ok := rdb.(*redis.Client)
	if !ok {
		return fmt.Errorf("%s: waiting for replicas needs a single primary (plain or Sentinel), not %T", what, rdb)
	}
	conn := client.Conn()
	defer conn.Close()
	if err := conn.Set(ctx, keys.ReplicaMarker, what, replicaMarkerTTL).Err(); err != nil {
		return fmt.Errorf("%s: mark for replicas: %w", what, err)
	}
	n, err := conn.Wait(ctx, cfg.RedisWaitReplicas, cfg.RedisWaitTimeout).Result()
	if err != nil {
		return fmt.Errorf("%s: wait for replicas: %w", what, err)
	}
	if n < int64(cfg.RedisWaitReplicas) {
		return fmt.Errorf("%w: %s: %d of %d replicas have it after %s; it may be lost if Redis fails over now",
			ErrNotReplicated, what, n, cfg.RedisWaitReplicas, cfg.RedisWaitTimeout)
	}
	return nil
}

// NotReplicatedError is a submission Redis queued but fewer replicas than
// asked for confirmed in time: the job may run, or be lost if Redis fails
// over now. It wraps ErrNotReplicated.
type NotReplicatedError struct {
	JobID, Queue string
	// Keyed: the submission had an idempotency key, so submitting it
	// again is safe.
	Keyed bool
	Err   error
}

func (e *NotReplicatedError) Error() string {
	if e.Keyed {
		return e.Err.Error() + "; submitting it again with the same idempotency key is safe"
	}
	return e.Err.Error() + fmt.Sprintf("; job %s may still run: look it up before submitting it again (an idempotency key makes resubmitting safe)", e.JobID)
}

func (e *NotReplicatedError) Unwrap() error { return e.Err }

// awaitJobReplicated is AwaitReplicas for a submitted job. It then checks
// that the job is on the primary it waited on: a failover between the
// enqueue and the wait would have lost it.
func (c *Client) awaitJobReplicated(ctx context.Context, job *Job) error {
	if c.cfg.RedisWaitReplicas <= 0 {
		return nil
	}
	err := AwaitReplicas(ctx, c.rdb, c.cfg, "job "+job.ID)
	if err == nil {
		if _, err = c.insp.GetTaskInfo(job.Queue, job.ID); err != nil {
			err = fmt.Errorf("%w: job %s is not on the Redis primary after the wait (a failover?): %w", ErrNotReplicated, job.ID, err)
		}
	}
	if err != nil {
		return &NotReplicatedError{JobID: job.ID, Queue: job.Queue, Keyed: job.IdempotencyKey != "", Err: err}
	}
	return nil
}
