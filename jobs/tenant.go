package jobs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/keys"
)

// A tenant's jobs are indexed in Redis beside asynq's own keys
// (keys.TenantJobs, keys.TenantOpen). The worker removes a job from the open set when it writes its result;
// entries whose task is gone (retention ended, or asynq archived it without
// a result) are pruned when found.

// reserve adds the job to its tenant's open set, refusing it if that makes
// more than max (0: no cap).
func (d *Draft) reserve(ctx context.Context, tenant string, max int) error {
	key := keys.TenantOpen(tenant)
	d.member = openMember(d.job.Queue, d.job.ID)
	// The reservation key marks it as in flight for pruneOpen.
	err := d.c.rdb.Set(ctx, keys.Reservation(tenant, d.job.Queue, d.job.ID), "1", ReservationTTL).Err()
	var added int64
	if err == nil {
		added, err = d.c.rdb.SAdd(ctx, key, d.member).Result()
	}
	if err != nil {
		return fmt.Errorf("count the unfinished jobs of tenant %s: %w", tenant, err)
	}
	// An idempotent ID already in the set is the same job: it stays.
	d.reserved = added == 1
	if max <= 0 || !d.reserved {
		return nil
	}
	n, err := d.c.rdb.SCard(ctx, key).Result()
	if err == nil && n > int64(max) {
		if err = d.c.pruneOpen(ctx, tenant); err == nil {
			n, err = d.c.rdb.SCard(ctx, key).Result()
		}
	}
	if err != nil {
		d.Abort(ctx)
		return fmt.Errorf("count the unfinished jobs of tenant %s: %w", tenant, err)
	}
	if n > int64(max) {
		d.Abort(ctx)
		return &TooManyOpenError{Tenant: tenant, Max: max}
	}
	return nil
}

// pruneOpen removes from a tenant's open set the jobs that have ended.
func (c *Client) pruneOpen(ctx context.Context, tenant string) error {
	key := keys.TenantOpen(tenant)
	members, err := c.rdb.SMembers(ctx, key).Result()
	if err != nil {
		return err
	}
	for _, m := range members {
		q, id, ok := splitMember(m)
		if !ok {
			c.rdb.SRem(ctx, key, m)
			continue
		}
		info, err := c.insp.GetTaskInfo(q, id)
		err = redisFailure(err)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
			// Not enqueued (yet): a reservation in flight, or an enqueue
			// that never completed. Reservations are short; leave those
			// made in the last minute.
			if c.reservationStale(ctx, tenant, q, id) {
				c.rdb.SRem(ctx, key, m)
			}
		case err != nil:
			return err
		case info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived:
			c.rdb.SRem(ctx, key, m)
		default:
			// A task under the ID that is not the tenant's is not one of
			// its unfinished jobs.
			if owner, ok := OwnerOf(info.Payload); !ok || owner != tenant {
				c.rdb.SRem(ctx, key, m)
			}
		}
	}
	return nil
}

// reservationStale reports whether a reserved job that is not in its queue
// was reserved long enough ago to be given up: its submission failed
// without releasing it (a crashed API server).
func (c *Client) reservationStale(ctx context.Context, tenant, queue, id string) bool {
	// Job IDs carry no time, so Begin marks each reservation with a key
	// that lives as long as an upload may take.
	n, err := c.rdb.Exists(ctx, keys.Reservation(tenant, queue, id)).Result()
	return err == nil && n == 0
}

// ReservationTTL bounds how long a submission may take to upload: its
// place among its tenant's unfinished jobs is given up after that. The
// API's body timeout must not exceed it.
const ReservationTTL = 2 * time.Hour

// indexTenantJob records an enqueued job in its tenant's list (once), and trims
// entries older than twice the result retention. Its transaction's keys
// share the tenant's hash slot (internal/keys).
func (c *Client) indexTenantJob(ctx context.Context, job *Job) error {
	key := keys.TenantJobs(job.Tenant)
	seq, err := c.rdb.Incr(ctx, keys.TenantSeq(job.Tenant)).Result()
	if err != nil {
		return err
	}
	// Scores are unique and increase with time: milliseconds times 1000
	// plus a sequence number, exact in a float64 until 2255.
	score := job.SubmittedAt.UnixMilli()*1000 + seq%1000
	old := (job.SubmittedAt.UnixMilli() - 2*c.cfg.ResultRetention.Milliseconds()) * 1000
	_, err = c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		// NX: a job indexed again (found by its idempotency key) keeps
		// its place.
		p.ZAddNX(ctx, key, redis.Z{Score: float64(score), Member: openMember(job.Queue, job.ID)})
		p.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(old, 10))
		p.Del(ctx, keys.Reservation(job.Tenant, job.Queue, job.ID))
		return nil
	})
	return err
}

// listed reports whether a job is in its tenant's list (or whether Redis
// could not say).
func (c *Client) listed(ctx context.Context, tenant, queue, id string) bool {
	err := c.rdb.ZScore(ctx, keys.TenantJobs(tenant), openMember(queue, id)).Err()
	return !errors.Is(err, redis.Nil)
}

// ReleaseOpen takes a finished job out of its tenant's open set.
func ReleaseOpen(ctx context.Context, rdb redis.UniversalClient, job *Job) error {
	if job.Tenant == "" {
		return nil
	}
	return rdb.SRem(ctx, keys.TenantOpen(job.Tenant), openMember(job.Queue, job.ID)).Err()
}

// ListFilter selects a tenant's jobs.
type ListFilter struct {
	Queue string
	State State
	// Cursor continues a listing where the previous page ended.
	Cursor string
	// Limit is the most jobs on a page.
	Limit int
}

// ErrBadCursor is a cursor this server did not hand out.
var ErrBadCursor = errors.New("cursor is not valid")

// List returns the tenant's jobs, newest first, and the cursor of the
// next page ("" when there is none). A page may hold fewer than Limit jobs
// when the filter skips many; only an empty cursor means the end. An index
// entry whose task is gone, or is not the tenant's (its ID was used again
// after the task's retention ended: the index outlives tasks), is removed,
// not listed.
func (t TenantJobs) List(ctx context.Context, f ListFilter) ([]*JobStatus, string, error) {
	c, tenant := t.c, t.tenant
	if f.Limit <= 0 {
		f.Limit = 50
	}
	key := keys.TenantJobs(tenant)
	max := "+inf"
	if f.Cursor != "" {
		if _, err := strconv.ParseUint(f.Cursor, 10, 64); err != nil {
			return nil, "", ErrBadCursor
		}
		max = "(" + f.Cursor
	}
	out := []*JobStatus{}
	// A page scans at most this many entries, so a filter that matches
	// little answers quickly, with a cursor to go on.
	const scanMax = 1000
	for scanned := 0; scanned < scanMax; {
		batch, err := c.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: max, Min: "-inf", Count: int64(f.Limit + 1)}).Result()
		if err != nil {
			return nil, "", fmt.Errorf("list the jobs of tenant %s: %w", tenant, err)
		}
		if len(batch) == 0 {
			return out, "", nil
		}
		for _, z := range batch {
			if len(out) == f.Limit {
				// Another entry exists: this page ends here.
				return out, strings.TrimPrefix(max, "("), nil
			}
			scanned++
			max = "(" + strconv.FormatUint(uint64(z.Score), 10)
			m, _ := z.Member.(string)
			q, id, ok := splitMember(m)
			if !ok || (f.Queue != "" && q != f.Queue) {
				continue
			}
			info, err := c.insp.GetTaskInfo(q, id)
			err = redisFailure(err)
			if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
				c.rdb.ZRem(ctx, key, m)
				continue
			}
			if err != nil {
				return nil, "", fmt.Errorf("job %s: %w", id, err)
			}
			if owner, ok := OwnerOf(info.Payload); !ok || owner != tenant {
				c.rdb.ZRem(ctx, key, m)
				continue
			}
			if st := statusOf(info); f.State == "" || st.State == f.State {
				out = append(out, st)
			}
		}
	}
	return out, strings.TrimPrefix(max, "("), nil
}
