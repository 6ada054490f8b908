// Package e2e runs sandq end to end against real services: Redis and MinIO
// started by the test as child processes, real runsc sandboxes on the
// image built by `make test`. Nothing here skips: a missing runsc, Redis,
// MinIO or image fails the run.
package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

// canary is in the worker's environment; no job may see it.
const canary = "SANDQ_TEST_SECRET_CANARY"

var env struct {
	stack  *devstack.Stack
	cfg    jobs.Config
	store  *storage.Store
	client *jobs.Client
	runner *executor.RunscRunner
	worker *jobs.Worker
	state  string
	// producerS3 is what the suite's client (the producer) reaches S3
	// with; cfg.Storage and store have the worker's credentials.
	producerS3 storage.Config
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e set-up failed: %v\n(`make test` installs and builds what these tests need)\n", err)
		teardown()
		return 1
	}
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func setup() error {
	ctx := context.Background()
	for _, bin := range []string{"runsc", "redis-server", "minio", "debootstrap"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed: %w", bin, err)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("end-to-end tests run sandboxes and must run as root")
	}
	imageDir := os.Getenv("SANDQ_IMAGE_DIR")
	if imageDir == "" {
		imageDir = "/var/lib/sandq/images"
	}
	imageName := os.Getenv("SANDQ_TEST_IMAGE")
	if imageName == "" {
		imageName = "default"
	}
	if _, err := image.Path(imageDir, imageName); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sandq-e2e-")
	if err != nil {
		return err
	}
	env.state = filepath.Join(dir, "state")
	webhookSecret, err := webhook.NewSecret()
	if err != nil {
		return err
	}
	logLevel := slog.LevelWarn
	if os.Getenv("SANDQ_TEST_LOG") != "" {
		logLevel = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))
	env.stack, err = devstack.Start(ctx, devstack.Options{Dir: filepath.Join(dir, "stack"), AccessKey: e2eRootKey, SecretKey: e2eRootSecret, Logger: logger})
	if err != nil {
		return err
	}
	env.cfg = jobs.Config{
		RedisAddr: env.stack.RedisAddr,
		Storage:   storage.Config{Endpoint: env.stack.MinioAddr, Bucket: "e2e"},
		Worker: jobs.WorkerConfig{
			Concurrency: 2, StateDir: env.state, ImageDir: imageDir, Image: imageName,
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
		return err
	}
	env.cfg.Storage.AccessKey, env.cfg.Storage.SecretKey = access.Worker.AccessKey, access.Worker.SecretKey
	env.producerS3 = env.cfg.Storage
	env.producerS3.AccessKey, env.producerS3.SecretKey = access.Producer.AccessKey, access.Producer.SecretKey
	if env.store, err = storage.New(env.cfg.Storage); err != nil {
		return err
	}
	producerStore, err := storage.New(env.producerS3)
	if err != nil {
		return err
	}
	if env.client, err = jobs.NewClient(env.cfg, producerStore, logger); err != nil {
		return err
	}
	// The worker's own environment carries a secret that jobs must not see.
	os.Setenv(canary, "do-not-leak-4f1c")
	env.runner, err = executor.NewRunscRunner(ctx, executor.RunscConfig{StateDir: env.state, Logger: logger, Network: &executor.NetworkConfig{}})
	if err != nil {
		return err
	}
	if env.worker, err = jobs.NewWorker(env.cfg, env.runner, env.store, logger); err != nil {
		return err
	}
	return env.worker.Start(ctx)
}

func teardown() error {
	var errs []error
	if env.worker != nil {
		env.worker.Shutdown()
	}
	if env.runner != nil {
		errs = append(errs, env.runner.Close(context.Background()))
	}
	if env.client != nil {
		env.client.Close()
	}
	if env.stack != nil {
		errs = append(errs, env.stack.Stop())
		os.RemoveAll(filepath.Dir(env.stack.Dir))
	}
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
