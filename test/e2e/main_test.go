// Package e2e runs sandq end to end against real services: Redis and MinIO
// started by the test as child processes, real runsc sandboxes on the
// image built by `make test`. Under -short (the fast tier) the whole suite
// is skipped; otherwise nothing here skips: a missing runsc, Redis, MinIO
// or image fails the run.
package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
	"github.com/sandq/sandq/worker"
)

// canary is in the worker's environment; no job may see it.
const canary = "SANDQ_TEST_SECRET_CANARY"

var env struct {
	suite  *sandqtest.Env
	stack  *devstack.Stack
	cfg    jobs.Config
	store  *storage.Store
	client *jobs.Client
	runner *executor.RunscRunner
	worker *worker.Worker
	state  string
	// producerS3 is what the suite's client (the producer) reaches S3
	// with; cfg.Storage and store have the worker's credentials.
	producerS3 storage.Config
}

func TestMain(m *testing.M) {
	os.Exit(testenv.RunSuite(m, "e2e", "root, runsc, Redis, MinIO, debootstrap and the built images", setup))
}

func setup(ctx context.Context) (_ func(failed bool) error, err error) {
	suite, err := sandqtest.Start(ctx, sandqtest.Options{Name: "e2e", RootKey: e2eRootKey, RootSecret: e2eRootSecret, Programs: []string{"debootstrap"}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, suite.Close(ctx))
		}
	}()
	env.suite, env.stack = suite, suite.Stack
	env.state = filepath.Join(suite.Dir, "state")
	webhookSecret, err := webhook.NewSecret()
	if err != nil {
		return nil, err
	}
	env.cfg = jobs.Config{
		RedisAddr: env.stack.RedisAddr,
		Storage:   storage.Config{Endpoint: env.stack.MinioAddr, Bucket: "e2e"},
		Worker: jobs.WorkerConfig{
			Concurrency: 2, StateDir: env.state, ImageDir: suite.Image.Dir, Image: suite.Image.Name,
			Queues: map[string]int{"default": 1, "other": 1}, ShutdownGrace: 5 * time.Second,
		},
		MaxRetry:     1,
		PollInterval: 100 * time.Millisecond,
		Webhook: jobs.WebhookConfig{
			Secrets:      map[string][]string{"*": {webhookSecret}},
			AllowPrivate: true, // receivers run on loopback
			// 2s: asynq schedules retries in whole seconds, so a shorter delay
			// could retry within the same second (same webhook-timestamp).
			Schedule:    []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second},
			Timeout:     2 * time.Second,
			MaxAttempts: 5,
		},
		Egress: jobs.EgressConfig{
			Groups: map[string][]string{"examples": {"*.example.com"}},
			Queues: map[string]jobs.QueueEgress{
				"default": {Max: []string{"npm", "examples"}, Default: []string{"npm"}},
			},
		},
	}.WithDefaults()
	// MinIO's root user only prepares the bucket (as `sandq dev` and
	// compose.yaml do). The worker, and every store the tests make from
	// cfg.Storage, have the worker's user; the client the producer's: the
	// whole suite runs on least privilege.
	access, err := env.stack.ProvisionBucket(ctx, env.cfg.Storage.Bucket, devstack.ProvisionOptions{ExpiryDays: env.cfg.ObjectExpiryDays()})
	if err != nil {
		return nil, err
	}
	env.cfg.Storage.AccessKey, env.cfg.Storage.SecretKey = access.Worker.AccessKey, access.Worker.SecretKey
	env.producerS3 = env.cfg.Storage
	env.producerS3.AccessKey, env.producerS3.SecretKey = access.Producer.AccessKey, access.Producer.SecretKey
	if env.store, err = storage.New(env.cfg.Storage); err != nil {
		return nil, err
	}
	producerStore, err := storage.New(env.producerS3)
	if err != nil {
		return nil, err
	}
	if env.client, err = jobs.NewClient(env.cfg, producerStore, suite.Logger); err != nil {
		return nil, err
	}
	suite.Defer("producer client", func(context.Context) error { return env.client.Close() })
	// The worker's own environment carries a secret that jobs must not see.
	os.Setenv(canary, "do-not-leak-4f1c")
	w, err := sandqtest.StartWorker(ctx, env.cfg, executor.RunscConfig{StateDir: env.state, Logger: suite.Logger, Network: &executor.NetworkConfig{}}, env.store, suite.Logger)
	if err != nil {
		return nil, err
	}
	suite.Defer("worker", w.Close)
	env.runner, env.worker = w.Runner, w.Worker
	return func(bool) error { return suite.Close(context.Background()) }, nil
}
