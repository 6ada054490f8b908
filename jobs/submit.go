package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/hibiken/asynq"
	"golang.org/x/sync/errgroup"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/storage"
)

// TooLargeError refuses a submission over a size or count cap. It is also
// a FieldError (errors.As finds either).
type TooLargeError struct{ FieldError }

func tooLarge(field, msg string) *TooLargeError {
	return &TooLargeError{FieldError{Field: field, Msg: msg}}
}

// Unwrap returns the FieldError.
func (e *TooLargeError) Unwrap() error { return &e.FieldError }

// TooManyOpenError refuses a submission of a tenant that has MaxOpen
// unfinished jobs already.
type TooManyOpenError struct {
	Tenant string
	Max    int
}

func (e *TooManyOpenError) Error() string {
	return fmt.Sprintf("tenant %s has %d unfinished jobs, the most it may have; wait for some to end", e.Tenant, e.Max)
}

// Validate checks a submission against the configuration without touching
// any service, and returns the resolved runtime and limits. Files are
// checked by their declared sizes; uploads check them again as they stream.
func (c *Client) Validate(s *Submission) (string, Limits, error) {
	lim, err := c.checkSpec(s)
	if err != nil {
		return "", Limits{}, err
	}
	if err := checkScriptName(s.Script.Name); err != nil {
		return "", Limits{}, err
	}
	rt, err := ResolveRuntime(s.Runtime, s.Script.Name)
	if err != nil {
		return "", Limits{}, err
	}
	if err := c.checkScriptSize(s.Script.Name, s.Script.Size); err != nil {
		return "", Limits{}, err
	}
	if len(s.Inputs) > c.cfg.MaxInputs {
		return "", Limits{}, c.tooManyInputs(len(s.Inputs))
	}
	names := make([]string, len(s.Inputs))
	var total int64
	for i, in := range s.Inputs {
		names[i] = in.Name
		if err := c.checkInputSize(in.Name, in.Size, total); err != nil {
			return "", Limits{}, err
		}
		total += in.Size
	}
	if err := CheckNames("inputs", names); err != nil {
		return "", Limits{}, err
	}
	if err := CheckInputsFrom(s.InputsFrom); err != nil {
		return "", Limits{}, err
	}
	return rt, lim, nil
}

// checkSpec checks everything but the files and resolves the limits.
func (c *Client) checkSpec(s *Submission) (Limits, error) {
	if s.Queue == "" {
		s.Queue = c.cfg.Queue
	}
	if err := CheckQueue(s.Queue); err != nil {
		return Limits{}, err
	}
	if s.Queue == c.cfg.Webhook.Queue {
		return Limits{}, &FieldError{Field: "queue", Msg: fmt.Sprintf("%q is the webhook delivery queue", s.Queue)}
	}
	if err := CheckIdempotencyKey(s.IdempotencyKey); err != nil {
		return Limits{}, err
	}
	if s.Image != "" {
		if err := CheckImageName(s.Image); err != nil {
			return Limits{}, err
		}
	}
	if s.Runtime != "" {
		if _, err := ResolveRuntime(s.Runtime, ""); err != nil {
			return Limits{}, err
		}
	}
	if err := CheckArgs(s.Args, c.cfg.MaxArgs, c.cfg.MaxArgBytes); err != nil {
		return Limits{}, err
	}
	if err := CheckEnv(s.Env, c.cfg.MaxEnv, c.cfg.MaxEnvBytes); err != nil {
		return Limits{}, err
	}
	return s.Limits.Resolve(c.cfg.DefaultLimits, c.cfg.MaxLimits)
}

func (c *Client) checkScriptSize(name string, size int64) error {
	if size > c.cfg.MaxScriptBytes {
		return tooLarge("script", fmt.Sprintf("%s is %d bytes, over the maximum of %d", name, size, c.cfg.MaxScriptBytes))
	}
	return nil
}

// checkInputSize checks an input of size bytes after total bytes of others.
func (c *Client) checkInputSize(name string, size, total int64) error {
	if size > c.cfg.MaxInputBytes {
		return tooLarge("inputs", fmt.Sprintf("%s is %d bytes, over the maximum of %d", name, size, c.cfg.MaxInputBytes))
	}
	if total+size > c.cfg.MaxInputsTotal {
		return tooLarge("inputs", fmt.Sprintf("%d bytes in all is over the maximum of %d", total+size, c.cfg.MaxInputsTotal))
	}
	return nil
}

func (c *Client) tooManyInputs(n int) error {
	return tooLarge("inputs", fmt.Sprintf("%d inputs is over the maximum of %d", n, c.cfg.MaxInputs))
}

// Enqueue validates a submission, uploads its files under the job's prefix
// and enqueues it. Nothing is left behind when it fails: a refused
// submission uploads nothing, and uploads are removed if enqueueing fails.
func (c *Client) Enqueue(ctx context.Context, s Submission) (*Enqueued, error) {
	if _, _, err := c.Validate(&s); err != nil {
		return nil, err
	}
	d, existing, err := c.Begin(ctx, s)
	if err != nil || existing != nil {
		return existing, err
	}
	// Other jobs' outputs first: their refusals (a job not finished, a
	// glob matching nothing) come before anything is uploaded, and their
	// copies take no time the uploads would wait for.
	if err := d.AddInputsFrom(ctx, s.InputsFrom); err != nil {
		d.Abort(ctx)
		return nil, err
	}
	if err := d.addFiles(ctx, s.Script, s.Inputs); err != nil {
		d.Abort(ctx)
		return nil, err
	}
	return d.Commit(ctx)
}

// Draft is a submission being received: its spec is checked and its files
// stream to the store one by one (AddScript, AddInput), each checked
// against the caps as it streams; Commit enqueues it, Abort removes what
// was uploaded. A Draft is used by one goroutine.
type Draft struct {
	c       *Client
	job     *Job
	names   []string
	total   int64
	uploads bool
	// uploadedInputs: addFiles has run.
	uploadedInputs bool
	// member is the job's entry in its tenant's set of unfinished jobs,
	// held (reserved) from Begin until Commit or Abort.
	member   string
	reserved bool
	ended    bool
	// maybeQueued: Redis failed after the enqueue was sent, so the job
	// may be queued; Abort then keeps what such a job needs (see Commit).
	maybeQueued bool
}

// Begin checks everything in a submission but its files, asks Redis what
// the network and webhook policies allow, and reserves a place among the
// tenant's unfinished jobs. A repeated idempotency key returns the
// submitter's existing job instead (and no Draft); a key whose job ID is
// held by anyone else's job is ErrIdempotencyKeyUnavailable.
func (c *Client) Begin(ctx context.Context, s Submission) (*Draft, *Enqueued, error) {
	lim, err := c.checkSpec(&s)
	if err != nil {
		return nil, nil, err
	}
	netPolicy, err := c.resolveNetwork(ctx, s.Queue, s.Network)
	if err != nil {
		return nil, nil, err
	}
	if err := c.checkWebhook(ctx, s.Queue, s.Tenant, s.Webhook); err != nil {
		return nil, nil, err
	}
	if err := c.checkImage(ctx, s.Queue, s.Image); err != nil {
		return nil, nil, err
	}
	id := NewJobID()
	if s.IdempotencyKey != "" {
		id = IdempotentJobID(s.Tenant, s.Queue, s.IdempotencyKey)
		existing, err := c.existingJob(ctx, s.Tenant, s.Queue, id)
		if err != nil || existing != nil {
			return nil, existing, err
		}
	}
	nonce := make([]byte, 6)
	rand.Read(nonce)
	d := &Draft{c: c, job: &Job{
		ID: id, Queue: s.Queue, Args: s.Args, Env: s.Env, Limits: lim, Tenant: s.Tenant, Image: s.Image,
		IdempotencyKey: s.IdempotencyKey, SubmittedAt: c.now().UTC(), Network: netPolicy, Webhook: s.Webhook,
		// Each submission uploads under its own prefix, so two racing
		// submissions with one idempotency key never overwrite each
		// other's files.
		UploadPrefix: JobPrefix(id) + "in-" + hex.EncodeToString(nonce) + "/",
	}}
	if s.Runtime != "" {
		d.job.Runtime, _ = ResolveRuntime(s.Runtime, "")
	}
	if s.Tenant != "" {
		if err := d.reserve(ctx, s.Tenant, s.MaxOpen); err != nil {
			return nil, nil, err
		}
	}
	return d, nil, nil
}

// AddScript streams the script to the store. size is its length, or -1
// when unknown (it is counted as it streams).
func (d *Draft) AddScript(ctx context.Context, name string, r io.Reader, size int64) error {
	if d.job.Script.Key != "" {
		return &FieldError{Field: "script", Msg: "more than one script"}
	}
	if err := checkScriptName(name); err != nil {
		return err
	}
	rt, err := ResolveRuntime(d.job.Runtime, name)
	if err != nil {
		return err
	}
	if err := d.c.checkScriptSize(name, size); err != nil {
		return err
	}
	over := func(n int64) error { return d.c.checkScriptSize(name, n) }
	ref, err := d.put(ctx, "script/", name, r, size, d.c.cfg.MaxScriptBytes, over)
	if err != nil {
		return err
	}
	d.job.Runtime, d.job.Script = rt, ref
	return nil
}

// AddInput streams an input file to the store (size -1 when unknown).
func (d *Draft) AddInput(ctx context.Context, name string, r io.Reader, size int64) error {
	if len(d.names)+1 > d.c.cfg.MaxInputs {
		return d.c.tooManyInputs(len(d.names) + 1)
	}
	if err := CheckName("inputs", name); err != nil {
		return err
	}
	if err := CheckNames("inputs", append(d.names[:len(d.names):len(d.names)], name)); err != nil {
		return err
	}
	if err := d.c.checkInputSize(name, size, d.total); err != nil {
		return err
	}
	capBytes := min(d.c.cfg.MaxInputBytes, d.c.cfg.MaxInputsTotal-d.total)
	over := func(n int64) error { return d.c.checkInputSize(name, n, d.total) }
	ref, err := d.put(ctx, "inputs/", name, r, size, capBytes, over)
	if err != nil {
		return err
	}
	d.names = append(d.names, name)
	d.total += ref.Size
	d.job.Inputs = append(d.job.Inputs, ref)
	return nil
}

// addFiles uploads a script and inputs of known sizes, several at a time,
// for Enqueue, which has checked their names and declared sizes (Validate)
// by themselves; here they are checked again beside the inputs copied
// from other jobs already (AddInputsFrom). Each streams capped at what its
// declared size was checked against.
func (d *Draft) addFiles(ctx context.Context, script File, inputs []File) error {
	if d.job.Script.Key != "" || d.uploadedInputs {
		return errors.New("draft has files already")
	}
	if n := len(d.names) + len(inputs); n > d.c.cfg.MaxInputs {
		return d.c.tooManyInputs(n)
	}
	rt, err := ResolveRuntime(d.job.Runtime, script.Name)
	if err != nil {
		return err
	}
	type upload struct {
		file     File
		dir      string
		capBytes int64
		over     func(int64) error
	}
	ups := []upload{{script, "script/", d.c.cfg.MaxScriptBytes, func(n int64) error { return d.c.checkScriptSize(script.Name, n) }}}
	names := append(d.names[:len(d.names):len(d.names)], make([]string, len(inputs))...)
	total := d.total
	for i, in := range inputs {
		names[len(d.names)+i] = in.Name
		if err := d.c.checkInputSize(in.Name, in.Size, total); err != nil {
			return err
		}
		before := total
		capBytes := min(d.c.cfg.MaxInputBytes, d.c.cfg.MaxInputsTotal-before)
		ups = append(ups, upload{in, "inputs/", capBytes, func(n int64) error { return d.c.checkInputSize(in.Name, n, before) }})
		total += in.Size
	}
	if err := CheckNames("inputs", names); err != nil {
		return err
	}
	refs := make([]FileRef, len(ups))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(Transfers)
	for i, u := range ups {
		g.Go(func() error {
			r, err := u.file.Open()
			if err != nil {
				return fmt.Errorf("open %s: %w", u.file.Name, err)
			}
			defer r.Close()
			refs[i], err = d.put(gctx, u.dir, u.file.Name, r, u.file.Size, u.capBytes, u.over)
			return err
		})
	}
	d.uploads, d.uploadedInputs = true, true
	if err := g.Wait(); err != nil {
		return err
	}
	d.job.Runtime, d.job.Script = rt, refs[0]
	d.job.Inputs = append(d.job.Inputs, refs[1:]...)
	d.names = names
	for _, r := range refs[1:] {
		d.total += r.Size
	}
	return nil
}

// put uploads r, failing with over(n) as soon as more than capBytes arrive.
func (d *Draft) put(ctx context.Context, dir, name string, r io.Reader, size, capBytes int64, over func(int64) error) (FileRef, error) {
	d.uploads = true
	cr := &cappedReader{r: r, max: capBytes, over: over}
	obj, err := d.c.store.Put(ctx, d.job.UploadPrefix+dir+name, cr, size, storage.PutOptions{ContentType: "application/octet-stream"})
	if cr.err != nil {
		return FileRef{}, cr.err
	}
	if err != nil {
		return FileRef{}, err
	}
	return FileRef{Name: name, Key: obj.Key, Size: obj.Size, SHA256: obj.SHA256}, nil
}

// cappedReader fails once more than max bytes have been read.
type cappedReader struct {
	r    io.Reader
	n    int64
	max  int64
	over func(int64) error
	err  error
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	k, err := c.r.Read(p)
	c.n += int64(k)
	if c.n > c.max {
		c.err = c.over(c.n)
		return 0, c.err
	}
	return k, err
}

// ErrIdempotencyKeyUnavailable refuses a submission whose idempotency key
// maps to the ID of a job that is not the submitter's. The tenant is part
// of the ID, so this takes a hash collision or a task put in Redis by
// other means (or, for a direct producer, an API job enqueued before the
// tenant was part of the ID). Nothing about that job is returned.
var ErrIdempotencyKeyUnavailable = errors.New("the job ID this idempotency key maps to is held by a job of another owner; use another key")

// existingJob returns the job an idempotency key's ID names in a queue
// when it is the tenant's, nil when there is none, and
// ErrIdempotencyKeyUnavailable when it belongs to someone else: every path
// that answers with an existing job goes through here. With
// RedisWaitReplicas, the job is returned once replicated: the earlier
// submission may have failed for want of replicas.
func (c *Client) existingJob(ctx context.Context, tenant, queue, id string) (*Enqueued, error) {
	info, err := c.insp.GetTaskInfo(queue, id)
	err = redisFailure(err)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("look up idempotency key: %w", err)
	}
	if owner, ok := OwnerOf(info.Payload); !ok || owner != tenant {
		c.logger.Error("an idempotency key's job ID is held by a job of another owner; submission refused",
			"job_id", id, "queue", queue, "tenant", tenant, "owner", owner)
		return nil, ErrIdempotencyKeyUnavailable
	}
	job, err := ParseJob(info.Payload)
	if err != nil {
		return nil, fmt.Errorf("look up idempotency key: job %s: %w", id, err)
	}
	if tenant != "" && !c.listed(ctx, tenant, queue, id) {
		// Not listed: the submission that queued it failed before it
		// could say so (Redis failing over: see Commit).
		if err := c.indexTenantJob(context.WithoutCancel(ctx), job); err != nil {
			c.logger.Error("indexing a tenant's job; it runs, but the API does not list it", "job_id", id, "tenant", tenant, "err", err)
		}
	}
	if err := c.awaitJobReplicated(ctx, job); err != nil {
		return nil, err
	}
	return &Enqueued{ID: id, Queue: queue, Existing: true}, nil
}

// Commit enqueues the job. A job whose idempotency key was taken by a
// racing submission of the same tenant meanwhile returns that job, and
// this one's files are removed; a job of anyone else under the ID is never
// returned (ErrIdempotencyKeyUnavailable).
func (d *Draft) Commit(ctx context.Context) (*Enqueued, error) {
	if d.ended {
		return nil, errors.New("draft already ended")
	}
	if d.job.Script.Key == "" {
		d.Abort(ctx)
		return nil, &FieldError{Field: "script", Msg: "no script was given"}
	}
	payload, err := d.job.Marshal()
	if err != nil {
		d.Abort(ctx)
		return nil, err
	}
	job := d.job
	for attempt := 0; ; attempt++ {
		_, err = d.c.client.EnqueueContext(ctx, asynq.NewTask(TypeRun, payload), d.c.cfg.TaskOptions(job)...)
		err = redisFailure(err)
		if !errors.Is(err, asynq.ErrTaskIDConflict) {
			break
		}
		existing, lerr := d.c.existingJob(ctx, job.Tenant, job.Queue, job.ID)
		switch {
		case lerr != nil:
			d.Abort(ctx)
			return nil, lerr
		case existing != nil:
			// The racing submission's job is the same member of the
			// tenant's set: it stays.
			d.reserved = false
			d.Abort(ctx)
			return existing, nil
		case attempt > 0:
			d.Abort(ctx)
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		// The job that held the ID is gone already (cancelled): enqueue
		// again, once.
	}
	if err != nil {
		// Redis may have taken the task before it failed (a primary
		// dying after the write): its uploads, reservation and place
		// among the tenant's unfinished jobs stay for such a job, which a
		// resubmission with the key finds (and lists). Otherwise the
		// bucket's expiry rule removes the uploads, and the tenant's
		// place goes once the reservation lapses (pruneOpen). A
		// connection that was never made sent nothing: all of it goes.
		d.maybeQueued = errors.Is(err, ErrRedisUnavailable) && !neverSent(err)
		d.Abort(ctx)
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	d.ended = true
	if job.Tenant != "" {
		if err := d.c.indexTenantJob(context.WithoutCancel(ctx), job); err != nil {
			d.c.logger.Error("indexing a tenant's job; it runs, but the API does not list it", "job_id", job.ID, "tenant", job.Tenant, "err", err)
		}
	}
	if err := d.c.awaitJobReplicated(ctx, job); err != nil {
		// The job stays enqueued: it may well run. The caller learns
		// that it may be lost, and may submit it again.
		return nil, err
	}
	d.c.logger.Debug("job enqueued", "job_id", job.ID, "queue", job.Queue, "tenant", job.Tenant)
	return &Enqueued{ID: job.ID, Queue: job.Queue}, nil
}

// Abort removes the draft's uploads and releases its reservation.
func (d *Draft) Abort(ctx context.Context) {
	if d.ended {
		return
	}
	d.ended = true
	if d.maybeQueued {
		d.c.logger.Warn("Redis failed during the enqueue, which may have been taken: the job's uploads and reservation are kept",
			"job_id", d.job.ID, "tenant", d.job.Tenant)
		return
	}
	ctx = context.WithoutCancel(ctx)
	if d.uploads {
		if err := d.c.store.RemovePrefix(ctx, d.job.UploadPrefix); err != nil {
			d.c.logger.Error("removing uploads of a job that was not enqueued", "job_id", d.job.ID, "err", err)
		}
	}
	if d.job.Tenant != "" {
		d.c.rdb.Del(ctx, keys.Reservation(d.job.Tenant, d.job.Queue, d.job.ID))
	}
	if d.reserved {
		if err := d.c.rdb.SRem(ctx, keys.TenantOpen(d.job.Tenant), d.member).Err(); err != nil {
			d.c.logger.Error("releasing a tenant's reservation", "job_id", d.job.ID, "err", err)
		}
	}
}

// openMember is a job's entry in its tenant's sets: "queue id" (queue
// names hold no spaces).
func openMember(queue, id string) string { return queue + " " + id }

func splitMember(m string) (queue, id string, ok bool) { return strings.Cut(m, " ") }

// neverSent reports whether err is a failure to reach Redis at all (a
// dial that failed, no sentinel answering), so that the command it reports
// never reached it. asynq reports its scripts' errors as text only, so the
// text is read when the error chain does not say.
func neverSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op == "dial"
	}
	msg := err.Error()
	return strings.Contains(msg, "dial tcp ") || strings.Contains(msg, "dial unix ") ||
		strings.Contains(msg, "all sentinels specified in configuration are unreachable")
}
