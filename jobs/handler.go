package jobs

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/storage"
)

// Handler runs job:run tasks.
type Handler struct {
	cfg    Config
	runner executor.Runner
	store  *storage.Store
	rdb    redis.UniversalClient
	jobs   *running
	budget *memoryBudget
	logger *slog.Logger
	name   string
	now    func() time.Time
	// handBack is closed once asynq has requeued the jobs a stopping worker
	// interrupted; their handlers wait for it (see Worker.Shutdown).
	handBack chan struct{}
	client   *asynq.Client
	insp     *asynq.Inspector
	metrics  *Metrics
	// warm holds sandboxes created ahead of demand; nil when off.
	warm *executor.WarmPool
	// tearing counts sandbox teardowns still running after their job's
	// handler returned; Worker.Shutdown waits for them.
	tearing sync.WaitGroup
}

// background runs a teardown after the handler returns, so asynq records the
// job as done without waiting for it.
func (h *Handler) background(fn func()) {
	h.tearing.Add(1)
	go func() {
		defer h.tearing.Done()
		fn()
	}()
}

var _ asynq.Handler = (*Handler)(nil)

// baseEnv is in every sandbox's environment unless the job overrides it.
var baseEnv = map[string]string{
	"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME": executor.WorkDir,
	"LANG": "C.UTF-8",
}

// sandboxEnv is a job's whole environment: the base, what the job asked
// for, and the directories. Nothing of the worker's own environment.
func sandboxEnv(job map[string]string) []string {
	env := map[string]string{}
	for k, v := range baseEnv {
		env[k] = v
	}
	for k, v := range job {
		env[k] = v
	}
	env["INPUT_DIR"] = executor.InputsMount
	env["OUTPUT_DIR"] = executor.OutputsMount
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ProcessTask runs one attempt of a job. A job that ran — whatever its exit
// status, timeout, memory kill or cancellation — writes its result and
// returns nil. Only failures of the system return an error, so that asynq
// retries them; the last attempt also writes an error result.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	taskID, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	attempt := retried + 1
	logger := h.logger.With("job_id", taskID, "queue", queue, "attempt", attempt)

	job, err := parseJob(t.Payload())
	if err != nil {
		h.writeResult(t, logger, &Result{ID: taskID, Queue: queue, Status: StatusError, Reason: err.Error(), Attempt: attempt, Outputs: []OutputDoc{}})
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	// An earlier attempt that wrote the result but could not queue the
	// webhook: the job has run; only the event is left to send.
	if prev := h.previousResult(queue, job.ID); prev != nil && prev.Attempt < attempt {
		logger.Info("job already has a result; queueing its webhook only")
		return h.enqueueWebhook(ctx, prev)
	}

	// A worker runs nothing over its own maxima, whatever the producer let
	// through.
	lim, err := LimitRequest{
		TimeoutSeconds: job.Limits.Timeout.Seconds(), MemoryBytes: job.Limits.Memory, DiskBytes: job.Limits.Disk,
		OutputBytes: job.Limits.OutputBytes, OutputFiles: job.Limits.OutputFiles,
	}.Resolve(h.cfg.DefaultLimits, h.cfg.MaxLimits)
	if err != nil {
		err = fmt.Errorf("refused by this worker's limits: %w", err)
		h.finish(ctx, t, logger, job, h.errorResult(job, job.Queue, attempt, err))
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	job.Limits = lim
	if job.Queue != queue {
		err := fmt.Errorf("payload names queue %q but the job came from queue %q", job.Queue, queue)
		h.finish(ctx, t, logger, job, h.errorResult(job, queue, attempt, err))
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	// The worker's own network policy for the queue the job came from
	// decides, whatever the producer saw. A worker whose policy is
	// narrower hands the job back for another worker (or a later retry).
	if job.Network != nil {
		pol, err := h.cfg.Egress.ResolveNetwork(queue, job.Network.Asked)
		if err != nil {
			err = fmt.Errorf("refused by this worker's network policy: %w", err)
			if retried >= maxRetry {
				h.finish(ctx, t, logger, job, h.errorResult(job, job.Queue, attempt, err))
			}
			return err
		}
		job.Network = pol
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h.jobs.add(job.ID, cancel)
	defer h.jobs.remove(job.ID)
	if h.cancelRequested(ctx, job.ID) {
		cancel(errCanceled)
	}

	res, err := h.run(runCtx, job, attempt, logger)
	if err != nil {
		if errors.Is(context.Cause(runCtx), errShutdown) {
			// The sandbox is gone. Returning an error would count as a
			// failed attempt (and archive a job on its last one); instead
			// the handler waits, and asynq's shutdown requeues the task
			// as it was.
			logger.Info("sandbox killed; job goes back to the queue", "err", err)
			h.jobs.remove(job.ID)
			<-h.handBack
			return fmt.Errorf("%w: %w", errShutdown, err)
		}
		if errors.Is(err, errMemoryBusy) && retried < maxRetry {
			// Not counted (see the worker's IsFailure). asynq archives a
			// task on its last attempt whatever the error, so a job without
			// retries left ends error below instead.
			logger.Info("no room in the memory budget in time; job goes back to the queue, attempt not counted", "err", err)
			return err
		}
		final := retried >= maxRetry || errors.Is(err, asynq.SkipRetry)
		logger.Error("job could not run", "err", err, "final", final)
		if final {
			res := h.errorResult(job, job.Queue, attempt, err)
			res.Image = cmp.Or(job.Image, h.cfg.Worker.Image)
			h.finish(ctx, t, logger, job, res)
		}
		return err
	}
	if err := h.finish(ctx, t, logger, job, res); err != nil {
		return err
	}
	if res.Status == StatusCanceled {
		h.rdb.Del(context.WithoutCancel(ctx), cancelKey(job.ID))
	}
	var exitCode any // the code, not the pointer's address
	if res.ExitCode != nil {
		exitCode = *res.ExitCode
	}
	logger.Info("job finished", "status", res.Status, "exit_code", exitCode, "duration_ms", res.DurationMS)
	return nil
}

// errorResult is the result of a job the system could not run.
func (h *Handler) errorResult(job *Job, queue string, attempt int, err error) *Result {
	now := h.now().UTC()
	return &Result{
		ID: job.ID, Queue: queue, Status: StatusError, Reason: err.Error(), Runtime: job.Runtime,
		Attempt: attempt, SubmittedAt: job.SubmittedAt, StartedAt: now, FinishedAt: now,
		Limits: limitsDoc(job.Limits), Outputs: []OutputDoc{}, Worker: h.name,
	}
}

// finish writes a final result and queues its webhook.
func (h *Handler) finish(ctx context.Context, t *asynq.Task, logger *slog.Logger, job *Job, res *Result) error {
	res.Webhook = h.webhookRef(job)
	if err := h.writeResult(t, logger, res); err != nil {
		return err
	}
	h.metrics.observe(res)
	if err := releaseOpen(context.WithoutCancel(ctx), h.rdb, job); err != nil {
		logger.Warn("taking the job out of its tenant's unfinished jobs", "err", err)
	}
	var err error
	for i, wait := range []time.Duration{0, 200 * time.Millisecond, time.Second, 3 * time.Second} {
		time.Sleep(wait)
		if err = h.enqueueWebhook(context.WithoutCancel(ctx), res); err == nil {
			return nil
		}
		logger.Warn("queueing the webhook", "try", i+1, "err", err)
	}
	logger.Error("could not queue the webhook; a later attempt of the job will, if it has one", "err", err)
	return err
}

// previousResult is the result an earlier attempt of the job wrote, if any.
func (h *Handler) previousResult(queue, id string) *Result {
	info, err := h.insp.GetTaskInfo(queue, id)
	if err != nil || len(info.Result) == 0 {
		return nil
	}
	r, err := ParseResult(info.Result)
	if err != nil {
		return nil
	}
	return r
}

func (h *Handler) writeResult(t *asynq.Task, logger *slog.Logger, res *Result) error {
	// A job that ran was fitted with its manifest already (capResult);
	// this bounds every other result too.
	if fitResult(res, h.cfg.MaxResultBytes) {
		logger.Warn("result over the size cap was cut", "max_bytes", h.cfg.MaxResultBytes, "manifest", res.Trimmed.Manifest != nil)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if _, err := t.ResultWriter().Write(b); err != nil {
		logger.Error("writing the result", "err", err)
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

func (h *Handler) cancelRequested(ctx context.Context, id string) bool {
	n, err := h.rdb.Exists(ctx, cancelKey(id)).Result()
	return err == nil && n > 0
}

// run runs the job in a fresh sandbox and uploads what it left.
func (h *Handler) run(ctx context.Context, job *Job, attempt int, logger *slog.Logger) (_ *Result, retErr error) {
	began := h.now()
	res := &Result{
		ID: job.ID, Queue: job.Queue, Runtime: job.Runtime, Image: cmp.Or(job.Image, h.cfg.Worker.Image), Attempt: attempt,
		SubmittedAt: job.SubmittedAt, Limits: limitsDoc(job.Limits), Outputs: []OutputDoc{}, Worker: h.name,
		Timings: &Timings{QueueWaitMS: max(0, began.Sub(job.SubmittedAt).Milliseconds())},
	}
	if errors.Is(context.Cause(ctx), errCanceled) {
		// Cancelled before it started: nothing runs.
		res.Status, res.Reason = StatusCanceled, "canceled before it started"
		res.StartedAt, res.FinishedAt = began.UTC(), began.UTC()
		res.Stdout, res.Stderr = &LogDoc{}, &LogDoc{}
		return res, nil
	}
	interp, ok := interpreter[job.Runtime]
	if !ok {
		return nil, fmt.Errorf("unknown runtime %q: %w", job.Runtime, asynq.SkipRetry)
	}
	args := append(append(append([]string{}, interp...), path.Join(executor.JobMount, job.Script.Name)), job.Args...)
	w := h.cfg.Worker
	var eg *executor.Egress
	if job.Network != nil {
		e := h.cfg.Egress
		eg = &executor.Egress{
			Policy: egress.Policy{Hosts: job.Network.Hosts, Ports: job.Network.Ports},
			Limits: egress.Limits{MaxConns: e.MaxConns, MaxBytes: e.MaxBytes, IdleTimeout: e.IdleTimeout, TotalTimeout: e.TotalTimeout},
		}
	}
	img, err := h.jobImage(job)
	if err != nil {
		return nil, err
	}
	res.ImageDigest = img.Digest
	// The job's memory limit is reserved from the worker's budget before its
	// sandbox is made, and given back after the sandbox is gone.
	release, err := h.reserveMemory(ctx, job)
	if err != nil {
		if errors.Is(context.Cause(ctx), errCanceled) {
			now := h.now()
			res.Status, res.Reason = StatusCanceled, "canceled while waiting for room in the worker's memory budget"
			res.StartedAt, res.FinishedAt = now.UTC(), now.UTC()
			res.Stdout, res.Stderr = &LogDoc{}, &LogDoc{}
			res.Timings.MemoryWaitMS = now.Sub(began).Milliseconds()
			return res, nil
		}
		return nil, err
	}
	// The sandbox is released, and then the job's memory given back to the
	// budget, after the sandbox is gone. After a run that produced a result
	// this happens beside the result's write: the container is deleted
	// already, and only scratch space, mounts and network are left.
	var sb executor.Sandbox
	defer func() {
		teardown := func() {
			if sb != nil {
				if err := sb.Release(ctx); err != nil {
					logger.Error("releasing the sandbox", "sandbox", sb.ID(), "err", err)
				}
			}
			release()
			if h.warm != nil {
				h.warm.Refill()
			}
		}
		if retErr == nil {
			h.background(teardown)
		} else {
			teardown()
		}
	}()
	reserved := h.now()
	res.Timings.MemoryWaitMS = reserved.Sub(began).Milliseconds()
	spec := executor.Spec{
		Egress: eg,
		Name:   job.ID, Image: img.Rootfs, Args: args, Env: sandboxEnv(job.Env), UID: w.UID, GID: w.GID,
		Limits: executor.Limits{
			Timeout: job.Limits.Timeout, Memory: job.Limits.Memory, Disk: job.Limits.Disk,
			OutputBytes: job.Limits.OutputBytes, OutputFiles: job.Limits.OutputFiles,
			Pids: w.Pids, LogBytes: w.LogBytes, LogTail: w.LogTail,
		},
	}
	var warm bool
	if h.warm != nil {
		sb, warm = h.warm.Take(spec)
	}
	if warm {
		logger = logger.With("sandbox", sb.ID(), "warm", true)
		err = h.fetchAll(ctx, job, sb)
		res.Timings.DownloadMS = h.now().Sub(reserved).Milliseconds()
		if err != nil {
			return nil, err
		}
	} else {
		sb, err = h.runner.Prepare(ctx, spec)
		if err != nil {
			sb = nil
			return nil, fmt.Errorf("prepare sandbox: %w", err)
		}
		logger = logger.With("sandbox", sb.ID())
		// The container is created while the script and inputs download:
		// its file systems are mounted only when it starts.
		created := make(chan error, 1)
		go func() { created <- sb.Create(ctx) }()
		ferr := h.fetchAll(ctx, job, sb)
		res.Timings.DownloadMS = h.now().Sub(reserved).Milliseconds()
		if cerr := <-created; cerr != nil {
			return nil, fmt.Errorf("create sandbox: %w", cerr)
		}
		if ferr != nil {
			return nil, ferr
		}
	}

	out, err := sb.Run(ctx)
	if err != nil {
		return nil, fmt.Errorf("run sandbox: %w", err)
	}
	res.StartedAt, res.FinishedAt = out.StartedAt.UTC(), out.FinishedAt.UTC()
	res.DurationMS = out.FinishedAt.Sub(out.StartedAt).Milliseconds()
	res.Timings.SandboxStartMS = out.StartedAt.Sub(out.CreatedAt).Milliseconds()
	res.Timings.WarmStart = out.Warm
	res.Timings.RunMS = res.DurationMS
	res.ExitCode, res.Signal = out.ExitCode, out.Signal
	if job.Network != nil {
		res.Egress = egressDoc(job.Network, out.Egress, out.Bypass)
	}
	switch {
	case out.Interrupted != nil && errors.Is(out.Interrupted, errCanceled):
		res.Status, res.Reason = StatusCanceled, "canceled on request; the sandbox was killed"
	case out.Interrupted != nil:
		return nil, fmt.Errorf("interrupted: %w", out.Interrupted)
	case out.TimedOut:
		res.Status, res.Reason = StatusTimedOut, fmt.Sprintf("killed after the %s timeout", job.Limits.Timeout)
	case out.OOMKilled:
		res.Status, res.Reason = StatusOutOfMemory, fmt.Sprintf("killed by the %s memory limit", FormatSize(job.Limits.Memory))
	case out.TaskLimited:
		res.Status, res.Reason = StatusFailed, fmt.Sprintf("killed: the sandbox hit its limit of %d tasks (processes and threads) and died", w.Pids)
	case out.ExitCode != nil && *out.ExitCode == 0:
		res.Status = StatusSucceeded
	default:
		res.Status = StatusFailed
	}

	// Uploads go on after a cancellation: the job's outputs are its result.
	upCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.FinishAllowance)
	defer cancel()
	runPrefix := fmt.Sprintf("%srun-%d-%s/", JobPrefix(job.ID), attempt, sb.ID())
	err = h.upload(upCtx, sb, out, runPrefix, res)
	if err == nil {
		// As finish will write it: the webhook reference counts too.
		res.Webhook = h.webhookRef(job)
		err = h.capResult(upCtx, res, runPrefix)
	}
	if err != nil {
		if rerr := h.store.RemovePrefix(upCtx, runPrefix); rerr != nil {
			logger.Warn("removing a failed attempt's partial uploads", "err", rerr)
		}
		return nil, err
	}
	res.Timings.UploadMS = h.now().Sub(out.FinishedAt).Milliseconds()
	res.Timings.TotalInWorkerMS = h.now().Sub(began).Milliseconds()
	return res, nil
}

// egressDoc is the result's account of a networked job's network: its
// policy, the proxy's audit a, and what the firewall refused around the
// proxy (b; nil when it could not be read).
func egressDoc(p *NetworkPolicy, a *egress.Audit, b *jobnet.Bypass) *EgressDoc {
	d := &EgressDoc{
		Asked: p.Asked, Hosts: p.Hosts, Ports: p.Ports,
		Requests: []EgressEvent{}, Destinations: []EgressDestination{}, Refusals: []EgressRefusal{},
	}
	if a != nil {
		d.Allowed, d.Refused, d.Failed = int(a.Allowed), int(a.Refused), int(a.Failed)
		d.BytesOut, d.BytesIn = a.BytesOut, a.BytesIn
		d.RequestsUnlisted = int(a.Unlisted)
		for _, e := range a.Events {
			d.Requests = append(d.Requests, EgressEvent{
				Time: e.Time, Host: e.Host, Port: e.Port, Method: e.Method,
				Decision: e.Decision, Reason: e.Reason, BytesOut: e.BytesOut, BytesIn: e.BytesIn,
			})
		}
		for _, x := range a.Destinations {
			d.Destinations = append(d.Destinations, EgressDestination{
				Host: x.Host, Port: x.Port, Allowed: int(x.Allowed), Failed: int(x.Failed), BytesOut: x.BytesOut, BytesIn: x.BytesIn,
			})
		}
		if o := a.OtherDestinations; o != nil {
			d.OtherDestinations = &EgressOther{
				Destinations: int(o.Destinations), Count: int(o.Allowed + o.Failed),
				Allowed: int(o.Allowed), Failed: int(o.Failed), BytesOut: o.BytesOut, BytesIn: o.BytesIn,
			}
		}
		for _, x := range a.Refusals {
			d.Refusals = append(d.Refusals, EgressRefusal{Host: x.Host, Port: x.Port, Count: int(x.Count), Reason: x.Reason})
		}
		if o := a.OtherRefusals; o != nil {
			d.OtherRefusals = &EgressOther{Destinations: int(o.Destinations), Count: int(o.Count)}
		}
	}
	if b != nil {
		d.Bypass = &EgressBypass{Attempts: int64(b.Packets), Bytes: int64(b.Bytes)}
	}
	return d
}

// fetchAll downloads the script and the inputs into the sandbox, several at
// a time.
func (h *Handler) fetchAll(ctx context.Context, job *Job, sb executor.Sandbox) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(transfers)
	g.Go(func() error { return h.fetch(gctx, job.Script, sb.JobDir()) })
	for _, in := range job.Inputs {
		g.Go(func() error { return h.fetch(gctx, in, sb.InputsDir()) })
	}
	return g.Wait()
}

// transfers is how many files one job downloads or uploads at once.
const transfers = 8

// fetch downloads an uploaded file into dir under its name and checks it.
func (h *Handler) fetch(ctx context.Context, ref FileRef, dir string) error {
	if err := CheckName("input", ref.Name); err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	dst := filepath.Join(dir, filepath.FromSlash(ref.Name))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	sum, err := h.store.Download(ctx, ref.Key, dst, ref.Size)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return fmt.Errorf("input %s is gone from the store: %w: %w", ref.Name, err, asynq.SkipRetry)
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", ref.Name, err)
	}
	if sum != ref.SHA256 {
		return fmt.Errorf("input %s: sha256 %s does not match the uploaded %s", ref.Name, sum, ref.SHA256)
	}
	return os.Chmod(dst, 0o644)
}

// upload stores the outputs and logs under prefix and fills res with their
// links. Outputs are read only now, after the container is gone.
func (h *Handler) upload(ctx context.Context, sb executor.Sandbox, out *executor.Outcome, prefix string, res *Result) error {
	coll, err := sb.Outputs()
	if err != nil {
		return fmt.Errorf("collect outputs: %w", err)
	}
	res.SkippedOutputsOmitted = coll.SkippedOmitted
	skip := func(d SkippedDoc) {
		if len(res.SkippedOutputs) < executor.MaxSkippedListed {
			res.SkippedOutputs = append(res.SkippedOutputs, d)
		} else {
			res.SkippedOutputsOmitted++
		}
	}
	for _, s := range coll.Skipped {
		skip(SkippedDoc(s))
	}
	// A name whose object key the store would refuse is the job's doing:
	// skipped, not a failure to retry.
	outPrefix := prefix + "outputs/"
	files := make([]executor.OutputFile, 0, len(coll.Files))
	for _, f := range coll.Files {
		if n := len(outPrefix) + len(f.Path); n > storage.MaxKeyBytes {
			skip(SkippedDoc{Path: executor.ShowPath(f.Path), Type: "file", Reason: fmt.Sprintf("object key of %d bytes is over the store's %d-byte limit", n, storage.MaxKeyBytes)})
			continue
		}
		files = append(files, f)
	}
	// Outputs and both logs upload several at a time; the result lists the
	// outputs in the collection's order.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(transfers)
	docs := make([]OutputDoc, len(files))
	refused := make([]bool, len(files))
	for i, f := range files {
		g.Go(func() error {
			doc, err := h.uploadOutput(gctx, coll, f, outPrefix)
			if errors.Is(err, storage.ErrInvalidKey) {
				refused[i] = true
				return nil
			}
			docs[i] = doc
			return err
		})
	}
	for _, s := range []struct {
		name string
		sum  executor.LogSummary
		dst  **LogDoc
	}{{"stdout", out.Stdout, &res.Stdout}, {"stderr", out.Stderr, &res.Stderr}} {
		g.Go(func() error {
			doc := &LogDoc{Tail: strings.ToValidUTF8(string(s.sum.Tail), "\uFFFD"), Bytes: s.sum.Bytes, DroppedBytes: s.sum.DroppedBytes}
			doc.Truncated = int64(len(s.sum.Tail)) < s.sum.Bytes
			key := prefix + "logs/" + s.name + ".log"
			const logType = "text/plain; charset=utf-8"
			if _, err := h.store.PutFile(gctx, key, s.sum.Path, storage.PutOptions{ContentType: logType}); err != nil {
				return err
			}
			link, err := h.store.Presign(gctx, key, h.cfg.LinkExpiry, storage.LinkOptions{ContentType: logType})
			if err != nil {
				return err
			}
			doc.URL, doc.ExpiresAt, doc.Key = link.URL, link.ExpiresAt, key
			*s.dst = doc
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, doc := range docs {
		if refused[i] {
			skip(SkippedDoc{Path: executor.ShowPath(files[i].Path), Type: "file", Reason: "the store refused its object key"})
			continue
		}
		res.Outputs = append(res.Outputs, doc)
		res.uploadedBytes += doc.Size
	}
	for _, l := range []*LogDoc{res.Stdout, res.Stderr} {
		res.uploadedBytes += l.Bytes - l.DroppedBytes
	}
	return nil
}

func (h *Handler) uploadOutput(ctx context.Context, coll *executor.Collection, f executor.OutputFile, prefix string) (OutputDoc, error) {
	file, err := coll.Open(f)
	if err != nil {
		return OutputDoc{}, err
	}
	defer file.Close()
	ctype := mime.TypeByExtension(path.Ext(f.Path))
	if ctype == "" {
		head := make([]byte, 512)
		n, _ := io.ReadFull(file, head)
		ctype = http.DetectContentType(head[:n])
		if _, err := file.Seek(0, io.SeekStart); err != nil {
			return OutputDoc{}, err
		}
	}
	// Never a type a browser would run on the store's origin; stored and
	// linked as a download named as the job named it.
	ctype = storage.SafeContentType(ctype)
	name := path.Base(f.Path)
	key := prefix + f.Path
	obj, err := h.store.Put(ctx, key, file, f.Size, storage.PutOptions{ContentType: ctype, Filename: name})
	if err != nil {
		return OutputDoc{}, err
	}
	link, err := h.store.Presign(ctx, key, h.cfg.LinkExpiry, storage.LinkOptions{ContentType: ctype, Filename: name})
	if err != nil {
		return OutputDoc{}, err
	}
	return OutputDoc{Path: f.Path, Size: obj.Size, SHA256: obj.SHA256, ContentType: ctype, URL: link.URL, ExpiresAt: link.ExpiresAt, Key: key}, nil
}
