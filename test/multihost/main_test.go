// Package multihost runs sandq's scale-out scenarios on simulated hosts
// (internal/testenv/multihost): each host a network, mount, PID and UTS
// namespace of its own running the real `sandq worker`, all reaching one
// Redis and one MinIO on a bridge, with real runsc and the test image.
// Each scenario ends with the fault suite's invariants: every job ended
// with exactly one result of the wanted status and one webhook-id, and
// nothing of a sandbox is left on any surviving host (nor, once they
// stop, of their workers).
//
// `make test` runs it at CI size; SANDQ_CHAOS_FULL=1 (`make chaos`) at
// full size (300 jobs). Figures (jobs, per-host counts, recovery times,
// wall time) are printed at the end. Under -short the suite is skipped;
// otherwise without root, runsc, Redis, MinIO or the image it fails.
package multihost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"testing"

	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/multihost"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

const (
	accessKey = "mh-access"
	bucket    = "multihost"
	// netGroup is the egress group networked jobs ask for; nothing in it
	// needs to answer.
	netGroup = "mhnet"
	// tagVar tags each job's sandbox with the job's number.
	tagVar = "MH_TAG"
)

var env struct {
	full      bool
	dir       string
	bin       string
	image     testenv.Image
	bridge    *multihost.Bridge
	stack     *devstack.Stack
	secretKey string
	store     *storage.Store
	hooks     string
	secret    string
	receiver  *multihost.Receiver
	logger    *slog.Logger
}

func TestMain(m *testing.M) {
	os.Exit(testenv.RunSuite(m, "multihost", "root, runsc, Redis, MinIO, iproute2, nsenter, unshare and the built image", setup))
}

func setup(ctx context.Context) (_ func(failed bool) error, err error) {
	start := time.Now()
	env.full = os.Getenv("SANDQ_CHAOS_FULL") != ""
	env.logger = testenv.Logger()
	env.image = testenv.TestImage()
	if err := errors.Join(testenv.CheckRoot(), testenv.CheckBinaries("runsc", "redis-server", "minio", "ip", "nsenter", "unshare", "bash"), env.image.Check()); err != nil {
		return nil, err
	}
	if env.dir, err = os.MkdirTemp("", "sandq-multihost-"); err != nil {
		return nil, err
	}
	var steps []func() error
	defer func() {
		if err != nil {
			for i := len(steps) - 1; i >= 0; i-- {
				steps[i]()
			}
		}
	}()
	steps = append(steps, func() error { return os.RemoveAll(env.dir) })
	// A run killed before its cleanup left its namespaces and bridge.
	if err := multihost.SweepStale(ctx); err != nil {
		return nil, err
	}
	if env.bridge, err = multihost.NewBridge(ctx); err != nil {
		return nil, err
	}
	steps = append(steps, env.bridge.Close)
	env.secretKey = "mh-secret-" + jobs.NewJobID()
	env.stack, err = testenv.StartServices(ctx, filepath.Join(env.dir, "stack"), testenv.ServicesOptions{
		Host: env.bridge.Addr.String(), AccessKey: accessKey, SecretKey: env.secretKey, AppendOnly: true, Logger: env.logger,
	})
	if err != nil {
		return nil, err
	}
	steps = append(steps, env.stack.Stop)
	if env.bin, err = testenv.BuildSandq(env.dir); err != nil {
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
	if env.receiver, err = multihost.NewReceiver(env.bridge.Addr.String()+":0", env.secret); err != nil {
		return nil, err
	}
	steps = append(steps, env.receiver.Close)
	env.hooks = filepath.Join(env.dir, "webhook.json")
	hooks := fmt.Sprintf(`{"secrets": {"*": [%q]}, "allow_private": true, "max_attempts": 20, "timeout": "5s", "schedule": ["2s", "2s", "2s", "5s", "5s", "10s"]}`, env.secret)
	if err := os.WriteFile(env.hooks, []byte(hooks), 0o600); err != nil {
		return nil, err
	}
	return func(failed bool) error {
		errs := []error{env.receiver.Close(), env.bridge.Close(), env.stack.Stop()}
		if failed {
			fmt.Fprintf(os.Stderr, "multihost: logs kept in %s\n", env.dir)
		} else {
			errs = append(errs, os.RemoveAll(env.dir))
		}
		report(time.Since(start))
		return errors.Join(errs...)
	}, nil
}

func storageConfig() storage.Config {
	return storage.Config{Endpoint: env.stack.MinioAddr, AccessKey: accessKey, SecretKey: env.secretKey, Bucket: bucket}
}

// workerEnv is a host's worker environment: the Redis and S3 of cfg
// (on the bridge).
func workerEnv(cfg jobs.Config) []string {
	redis := "SANDQ_REDIS_ADDR=" + cfg.RedisAddr
	if cfg.RedisURL != "" {
		redis = "SANDQ_REDIS_URL=" + cfg.RedisURL
	}
	s3 := cfg.Storage
	return []string{redis, "SANDQ_REDIS_WAIT_REPLICAS=" + strconv.Itoa(cfg.RedisWaitReplicas), "SANDQ_S3_ENDPOINT=" + s3.Endpoint, "SANDQ_S3_ACCESS_KEY=" + s3.AccessKey,
		"SANDQ_S3_SECRET_KEY=" + s3.SecretKey, "SANDQ_S3_BUCKET=" + s3.Bucket, "SANDQ_LOG_LEVEL=info"}
}

// The figures of each scenario, printed at the end.
var table struct {
	mu   sync.Mutex
	rows []string
}

const reportPath = "/tmp/sandq-multihost.txt"

func report(took time.Duration) {
	table.mu.Lock()
	defer table.mu.Unlock()
	if len(table.rows) == 0 {
		return
	}
	sort.Strings(table.rows)
	mode := "CI size (SANDQ_CHAOS_FULL=1 runs the full sizes)"
	if env.full {
		mode = "full size"
	}
	out := fmt.Sprintf("sandq multi-host scenarios, %s, %s (%s)\n\n%s\n", mode, took.Round(time.Second), time.Now().UTC().Format(time.RFC3339), strings.Join(table.rows, "\n"))
	fmt.Print("\n" + out)
	os.WriteFile(reportPath, []byte(out), 0o644)
}
