package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/barerunsc"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
	"github.com/sandq/sandq/worker"
)

// Credentials of the bench's own MinIO, which lives only as long as the run.
const (
	accessKey = "sandq-bench"
	secretKey = "sandq-bench-secret"
	bucket    = "bench"
)

// env is one run's services and runners.
type env struct {
	o      Options
	dir    string
	stack  *devstack.Stack
	cfg    jobs.Config
	store  *storage.Store
	client *jobs.Client
	insp   *asynq.Inspector
	runner *executor.RunscRunner
	bare   *barerunsc.Runner
	hooks  *receiver
	runsc  executor.RunscVersion
	// load measures the bench's own CPU and Redis's load (conditions.go).
	load *loadMeter
	// cleanup stops what setup started, last first (close).
	cleanup cleanup.Stack
	// seq numbers queues and bare containers; failed counts sandq jobs that
	// did not succeed, failures keeps the first reasons.
	mu       sync.Mutex
	seq      int
	failed   int
	failures []string
}

// setup checks the host, starts Redis (with AOF, as production runs it)
// and MinIO in a scratch directory, and makes the client, the runsc runner
// the in-process workers share, the bare runner and the webhook receiver.
func setup(ctx context.Context, o Options) (_ *env, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("sandq bench runs sandboxes and must run as root")
	}
	for _, bin := range []string{o.Runsc, "redis-server", "minio", o.SandqBinary} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is not installed: %w (scripts/install-deps.sh installs what sandq needs)", bin, err)
		}
	}
	if err := checkImages(o); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(o.TempDir, "sandq-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{o: o, dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()
	var cfg jobs.Config
	if e.stack, cfg, err = startStack(ctx, dir, o.Logger, &e.cleanup); err != nil {
		return nil, err
	}
	cfg.Worker.ImageDir, cfg.Worker.Image, cfg.Worker.Runsc, cfg.Worker.Platform = o.ImageDir, o.Image, o.Runsc, o.Platform
	e.cfg = cfg.WithDefaults()
	if err := e.cfg.Validate(); err != nil {
		return nil, err
	}
	if e.store, err = storage.New(e.cfg.Storage); err != nil {
		return nil, err
	}
	if err := e.store.EnsureBucket(ctx); err != nil {
		return nil, fmt.Errorf("bucket: %w", err)
	}
	if e.client, err = jobs.NewClient(e.cfg, e.store, o.Logger); err != nil {
		return nil, err
	}
	e.cleanup.Add("client", func(context.Context) error { e.client.Close(); return nil })
	opt, err := e.cfg.RedisConn()
	if err != nil {
		return nil, err
	}
	e.insp = asynq.NewInspector(opt)
	e.cleanup.Add("inspector", func(context.Context) error { e.insp.Close(); return nil })
	if e.runsc, err = executor.CheckRunsc(ctx, o.Runsc, o.Platform); err != nil {
		return nil, err
	}
	e.runner, err = executor.NewRunscRunner(ctx, executor.RunscConfig{
		Runsc: o.Runsc, Platform: o.Platform, StateDir: e.cfg.Worker.StateDir, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	e.cleanup.Add("runsc runner", e.runner.Close)
	e.bare, err = barerunsc.New(barerunsc.Config{Runsc: e.runsc.Path, Platform: o.Platform, Dir: filepath.Join(dir, "bare")})
	if err != nil {
		return nil, err
	}
	e.cleanup.Add("bare runner", e.bare.Close)
	if !o.NoWebhook {
		if e.hooks, err = newReceiver(e.cfg.Webhook.Secrets["*"]); err != nil {
			return nil, err
		}
		e.cleanup.Add("webhook receiver", func(context.Context) error { return e.hooks.close() })
	}
	return e, nil
}

// checkImages refuses a run whose variants' images are missing: the
// image for shell and python (and the memory run), and the one with
// pandas for python-pandas.
func checkImages(o Options) error {
	rootfs := filepath.Join(o.ImageDir, o.Image, "rootfs")
	if err := executor.CheckImage(rootfs); err != nil {
		return fmt.Errorf("image %q in %s: %w; build it with `sandq image build %s --packages-file images/default.packages`", o.Image, o.ImageDir, err, o.Image)
	}
	if !slices.Contains(o.Variants, VariantPythonPandas) {
		return nil
	}
	rootfs = filepath.Join(o.ImageDir, o.PandasImage, "rootfs")
	if err := executor.CheckImage(rootfs); err != nil {
		return fmt.Errorf("the %s variant runs on image %q, which has pandas and matplotlib (%q has not): in %s: %w; build it with `sandq image build %s --packages-file images/analysis.packages --overlay images/analysis.overlay`, or leave %s out of --variant",
			VariantPythonPandas, o.PandasImage, o.Image, o.ImageDir, err, o.PandasImage, VariantPythonPandas)
	}
	return nil
}

// close stops everything setup started and removes the scratch directory,
// unless something failed to stop.
func (e *env) close() error {
	if err := e.cleanup.Release(context.Background()); err != nil {
		// Leave the directory for a look at the logs.
		return fmt.Errorf("%w (scratch directory kept: %s)", err, e.dir)
	}
	return os.RemoveAll(e.dir)
}

// next returns a number unique in the run.
func (e *env) next() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	return e.seq
}

// startWorker starts an in-process worker serving queue at concurrency c
// in mode m, on the image of v: the production configuration
// (jobs.Config defaults), sharing the run's runsc runner.
func (e *env) startWorker(ctx context.Context, v variant, queue string, c int, m mode) (*worker.Worker, error) {
	w, err := e.newWorker(v, queue, c, m)
	if err != nil {
		return nil, err
	}
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// newWorker is startWorker's worker, not started yet. A worker with
// snapshot templates has made (or found) its image's template when it is
// returned; one that could not is refused, since its jobs would start
// cold.
func (e *env) newWorker(v variant, queue string, c int, m mode) (*worker.Worker, error) {
	cfg := e.cfg
	cfg.Worker.Image = e.imageName(v)
	cfg.Worker.Concurrency = c
	cfg.Worker.WarmSandboxes = m.warm
	cfg.Worker.Snapshots = m.snapshots
	cfg.Worker.SnapshotPool = m.pool
	cfg.Worker.Queues = map[string]int{queue: 1}
	w, err := worker.New(cfg, e.runner, e.store, e.o.Logger)
	if err != nil {
		return nil, err
	}
	if m.snapshots && len(w.SnapshotTemplates()) == 0 {
		// The worker logged why and would start every job cold.
		w.Shutdown()
		return nil, fmt.Errorf("no snapshot template for image %q: it declares no preload list (sandq image preload), or the worker could not make one (its log says why); --no-snapshots skips the restored runs", cfg.Worker.Image)
	}
	return w, nil
}

// receiver is a webhook receiver on loopback that verifies each delivery's
// signature and records when each job's arrived.
type receiver struct {
	secrets []string
	srv     *http.Server
	url     string
	mu      sync.Mutex
	got     map[string]time.Time
	waiting map[string]chan time.Time
	bad     int
}

func newReceiver(secrets []string) (*receiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook receiver: %w", err)
	}
	r := &receiver{secrets: secrets, url: "http://" + l.Addr().String() + "/hook", got: map[string]time.Time{}, waiting: map[string]chan time.Time{}}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(l)
	return r, nil
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(io.LimitReader(req.Body, 8<<20))
	var doc struct {
		ID string `json:"id"`
	}
	if err == nil {
		err = webhook.Verify(r.secrets, req.Header, body, at)
	}
	if err == nil {
		err = json.Unmarshal(body, &doc)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil || doc.ID == "" {
		r.bad++
		http.Error(w, "bad delivery", http.StatusBadRequest)
		return
	}
	if _, dup := r.got[doc.ID]; !dup {
		r.got[doc.ID] = at
		if ch, ok := r.waiting[doc.ID]; ok {
			ch <- at
			delete(r.waiting, doc.ID)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// wait returns when the job's webhook arrived, waiting up to limit.
func (r *receiver) wait(ctx context.Context, id string, limit time.Duration) (time.Time, error) {
	r.mu.Lock()
	if at, ok := r.got[id]; ok {
		r.mu.Unlock()
		return at, nil
	}
	ch := make(chan time.Time, 1)
	r.waiting[id] = ch
	r.mu.Unlock()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case at := <-ch:
		return at, nil
	case <-t.C:
		return time.Time{}, fmt.Errorf("webhook of job %s not received in %s", id, limit)
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// count is how many jobs' webhooks have arrived.
func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// arrival is when the job's first webhook arrived.
func (r *receiver) arrival(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.got[id]
	return at, ok
}

func (r *receiver) badDeliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

func (r *receiver) close() error { return r.srv.Close() }

// startStack starts a bench's own Redis (AOF on) and MinIO under dir, and
// adds their stop to cl. It returns them and the jobs config that reaches
// them, with a state directory under dir and a webhook secret, for the
// caller to complete.
func startStack(ctx context.Context, dir string, logger *slog.Logger, cl *cleanup.Stack) (*devstack.Stack, jobs.Config, error) {
	stack, err := devstack.Start(ctx, devstack.Options{
		Dir: filepath.Join(dir, "stack"), AccessKey: accessKey, SecretKey: secretKey, AppendOnly: true, Logger: logger,
	})
	if err != nil {
		return nil, jobs.Config{}, err
	}
	cl.Add("dev stack", func(context.Context) error { return stack.Stop() })
	secret, err := webhook.NewSecret()
	if err != nil {
		return nil, jobs.Config{}, err
	}
	return stack, jobs.Config{
		RedisAddr: stack.RedisAddr,
		Storage:   storage.Config{Endpoint: stack.MinioAddr, AccessKey: accessKey, SecretKey: secretKey, Bucket: bucket},
		Worker:    jobs.WorkerConfig{StateDir: filepath.Join(dir, "state")},
		Webhook:   jobs.WebhookConfig{Secrets: map[string][]string{"*": {secret}}, AllowPrivate: true},
	}, nil
}
