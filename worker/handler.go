package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// Handler runs job:run tasks.
type Handler struct {
	cfg    jobs.Config
	runner executor.Runner
	store  *storage.Store
	rdb    redis.UniversalClient
	jobs   *running
	budget *memoryBudget
	logger *slog.Logger
	name   string
	// now and sleep are the handler's clock (tests replace them).
	now   func() time.Time
	sleep func(time.Duration)
	// requeued is closed once asynq has requeued the jobs a stopping worker
	// interrupted; their handlers wait for it (see Worker.Shutdown).
	requeued chan struct{}
	client   *asynq.Client
	insp     *asynq.Inspector
	metrics  *Metrics
	// warm holds sandboxes created ahead of demand, and is the runner
	// when on; nil when off.
	warm *executor.WarmRunner
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
	// Python finds the job directory's sitecustomize (pythonSitecustomize)
	// first; a job's own PYTHONPATH comes after it.
	"PYTHONPATH": pythonSitePath,
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
	if p, ok := job["PYTHONPATH"]; ok && p != "" {
		env["PYTHONPATH"] = pythonSitePath + ":" + p
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

// previousResult is the result an earlier attempt of the job wrote, if any.
// It notes the task's result retention in the attempt on the way, which
// the job's live output expires with.
func (h *Handler) previousResult(a *attempt, id string) *jobs.Result {
	info, err := h.insp.GetTaskInfo(a.queue, id)
	if err != nil {
		return nil
	}
	a.retention = info.Retention
	if len(info.Result) == 0 {
		return nil
	}
	r, err := jobs.ParseResult(info.Result)
	if err != nil {
		return nil
	}
	return r
}

// resultRetries are the waits between tries to write a result (about 16 s
// of waiting; the job's 30 s lease bounds the whole: when it lapses asynq
// cancels the context, and the tries stop).
var resultRetries = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}

// writeResult writes the attempt's result. A Redis failover fails writes
// for a few seconds; retrying on the handler's clock saves running the
// whole job again (its attempt would otherwise wait out its lease).
func (h *Handler) writeResult(ctx context.Context, t *asynq.Task, logger *slog.Logger, res *jobs.Result) error {
	// A job that ran was fitted with its manifest already (capResult);
	// this bounds every other result too.
	if jobs.FitResult(res, h.cfg.MaxResultBytes) {
		logger.Warn("result over the size cap was cut", "max_bytes", h.cfg.MaxResultBytes, "manifest", res.Trimmed.Manifest != nil)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	err = retrying(ctx, resultRetries, h.sleep, func() error {
		_, err := t.ResultWriter().Write(b)
		return err
	}, func(try int, err error) { logger.Warn("writing the result", "try", try, "err", err) })
	if err != nil {
		logger.Error("writing the result", "err", err)
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// retrying calls try, and again after each of waits (slept with sleep)
// while it fails and ctx is not done; onErr hears of each failure with its
// try's number from 1. It returns the last try's error.
func retrying(ctx context.Context, waits []time.Duration, sleep func(time.Duration), try func() error, onErr func(int, error)) error {
	err := try()
	for i := 0; err != nil; i++ {
		onErr(i+1, err)
		if i == len(waits) || ctx.Err() != nil {
			break
		}
		sleep(waits[i])
		err = try()
	}
	return err
}

func (h *Handler) cancelRequested(ctx context.Context, id string) bool {
	n, err := h.rdb.Exists(ctx, keys.Cancel(id)).Result()
	return err == nil && n > 0
}
