// Package chaos is sandq's fault-injection suite. Against real Redis (with
// AOF, as production runs it), MinIO and runsc, it runs workers as child
// processes of the real sandq binary, kills and restarts them and the
// services by their own PIDs, sends hostile jobs and bad submissions, and
// after each scenario checks the invariants sandq promises (README,
// "Guarantees"): every job ended with exactly one result and, when it has a
// webhook, one webhook-id; nothing leaked (runsc containers, mounts,
// network namespaces, veths, firewall rules, lease files, scratch
// directories); host disk and memory flat.
//
// At the end it prints a table of the scenarios with pass/fail and the
// figures checked, and writes it to /tmp/sandq-chaos.txt.
//
// `make test` runs it at CI size: the hostile job that makes 100 000
// output files meets a cap of 1000; `make chaos` sets SANDQ_CHAOS_FULL=1
// for a cap of 10 000 (10 000 files collected and uploaded, about a minute
// more). Both queue 300 jobs across the Redis restarts and write 10 GiB to
// stdout. Jobs run on the image
// SANDQ_TEST_IMAGE (default "default") in SANDQ_IMAGE_DIR. A failed run
// keeps the workers' and services' logs in /tmp/sandq-chaos-logs;
// SANDQ_CHAOS_KEEP=1 keeps the whole temporary directory. Under -short
// (the fast tier) the whole suite is skipped; otherwise nothing here
// skips: without root, runsc, redis-server, minio or the image, the suite
// fails.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/multihost"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

const (
	accessKey = "chaos-access"
	bucket    = "chaos"
	// netGroup is the egress group networked chaos jobs ask for; nothing
	// in it needs to answer (the jobs only need a network of their own).
	netGroup = "chaosnet"
)

// env is the suite's shared state, set up once in TestMain.
var env struct {
	suite     *sandqtest.Env
	full      bool
	dir       string // everything of the suite: stack, state dirs, logs
	bin       string // the sandq binary
	stack     *devstack.Stack
	secretKey string // MinIO's secret: a canary no job may see
	canary    string // one more, in every worker's environment
	store     *storage.Store
	imageDir  string
	image     string
	egress    string // network policy file for workers
	hooks     string // webhook settings file for workers
	secret    string // webhook signing secret
	receiver  *multihost.Receiver
	logger    *slog.Logger
}

// queues of the suite; every one is ours alone. Each scenario has its own,
// so that a scenario's leftovers never run in the next.
var netQueues = []string{"chaos-kill", "chaos-hostile"}

func TestMain(m *testing.M) {
	os.Exit(testenv.RunSuite(m, "chaos", "root, runsc, Redis, MinIO, iproute2 and the built image", setup))
}

func setup(ctx context.Context) (_ func(failed bool) error, err error) {
	start := time.Now()
	os.Remove(reportPath)
	env.full = os.Getenv("SANDQ_CHAOS_FULL") != ""
	env.secretKey = "chaos-secret-" + jobs.NewJobID()
	env.canary = "chaos-canary-" + jobs.NewJobID()
	env.suite, err = sandqtest.Start(ctx, sandqtest.Options{
		Name: "chaos", RootKey: accessKey, RootSecret: env.secretKey, AppendOnly: true,
		Programs: []string{"ip"}, Keep: os.Getenv("SANDQ_CHAOS_KEEP") != "",
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, env.suite.Close(ctx))
		}
	}()
	env.dir, env.stack, env.logger = env.suite.Dir, env.suite.Stack, env.suite.Logger
	env.imageDir, env.image = env.suite.Image.Dir, env.suite.Image.Name
	if env.bin, err = env.suite.Sandq(); err != nil {
		return nil, err
	}
	if env.store, err = storage.New(storageConfig()); err != nil {
		return nil, err
	}
	if err := env.store.EnsureBucket(ctx); err != nil {
		return nil, err
	}
	if env.secret, err = webhook.NewSecret(); err != nil {
		return nil, err
	}
	env.hooks = filepath.Join(env.dir, "webhook.json")
	// Retries 2s apart: asynq schedules retries in whole seconds.
	hooks := fmt.Sprintf(`{"secrets": {"*": [%q]}, "allow_private": true, "max_attempts": 10, "timeout": "5s", "schedule": ["2s", "2s", "2s", "2s", "5s"]}`, env.secret)
	if err := os.WriteFile(env.hooks, []byte(hooks), 0o600); err != nil {
		return nil, err
	}
	env.egress = filepath.Join(env.dir, "egress.json")
	queues := []string{}
	for _, q := range netQueues {
		queues = append(queues, fmt.Sprintf(`%q: {"max": [%q], "default": [%q]}`, q, netGroup, netGroup))
	}
	egress := fmt.Sprintf(`{"groups": {%q: ["*.example.com"]}, "queues": {%s}}`, netGroup, strings.Join(queues, ", "))
	if err := os.WriteFile(env.egress, []byte(egress), 0o600); err != nil {
		return nil, err
	}
	if env.receiver, err = multihost.NewReceiver("127.0.0.1:0", env.secret); err != nil {
		return nil, err
	}
	return func(failed bool) error {
		err := teardown(failed)
		report(time.Since(start))
		return err
	}, nil
}

// logsKept is where the workers' and services' logs of a failed run go.
const logsKept = "/tmp/sandq-chaos-logs"

func teardown(failed bool) error {
	env.receiver.Close()
	// The services stop first, so that their logs are complete.
	errs := []error{env.stack.Stop()}
	if failed {
		os.RemoveAll(logsKept)
		os.MkdirAll(logsKept, 0o755)
		os.Rename(filepath.Join(env.dir, "logs"), filepath.Join(logsKept, "workers"))
		os.Rename(filepath.Join(env.dir, "stack", "logs"), filepath.Join(logsKept, "services"))
		fmt.Fprintf(os.Stderr, "chaos: the workers' and services' logs are kept in %s\n", logsKept)
	}
	// Never deletes through a mount: whatever is still mounted below (the
	// scenarios fail if anything is) keeps the directory.
	return errors.Join(append(errs, env.suite.Close(context.Background()))...)
}

func storageConfig() storage.Config {
	return storage.Config{Endpoint: env.stack.MinioAddr, AccessKey: accessKey, SecretKey: env.secretKey, Bucket: bucket}
}

// jobsConfig is a producer's configuration for queue q: retries enough to
// outlast the outages the scenarios cause.
func jobsConfig(q string) jobs.Config {
	return jobs.Config{
		RedisAddr:    env.stack.RedisAddr,
		Storage:      storageConfig(),
		Queue:        q,
		MaxRetry:     8,
		PollInterval: 200 * time.Millisecond,
	}.WithDefaults()
}

// producer is a client for queue q, closed with the test.
func producer(t *testing.T, q string) *jobs.Client {
	t.Helper()
	c, err := jobs.NewClient(jobsConfig(q), env.store, env.logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
