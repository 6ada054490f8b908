// Package redismodes runs sandq end to end on Redis as production deploys
// it: TLS with a client certificate, a Sentinel set (by URL and by
// flags), a Redis Cluster, and a Sentinel failover under load with real
// `sandq serve` and `sandq worker` processes. Each test starts its own
// Redis topology (internal/testenv's redistopo); MinIO, the test image
// and the sandq binary are shared. Under -short the whole suite is
// skipped; otherwise nothing here skips: a missing runsc, redis-server,
// MinIO or image fails the run.
package redismodes

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/storage"
)

// MinIO's root credentials; the suite uses them throughout (least
// privilege is test/e2e's subject, not this one's).
const (
	rootKey    = "redismodes-access"
	rootSecret = "redismodes-secret-key"
	bucket     = "redismodes"
)

var env struct {
	suite *sandqtest.Env
	s3    storage.Config
	store *storage.Store
}

func TestMain(m *testing.M) {
	os.Exit(testenv.RunSuite(m, "redismodes", "root, runsc, redis-server, redis-cli, MinIO and the built images", setup))
}

func setup(ctx context.Context) (_ func(failed bool) error, err error) {
	if err := testenv.CheckBinaries("redis-cli"); err != nil {
		return nil, err
	}
	suite, err := sandqtest.Start(ctx, sandqtest.Options{Name: "redismodes", RootKey: rootKey, RootSecret: rootSecret})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, suite.Close(ctx))
		}
	}()
	env.suite = suite
	env.s3 = storage.Config{Endpoint: suite.Stack.MinioAddr, AccessKey: rootKey, SecretKey: rootSecret, Bucket: bucket}
	if env.store, err = storage.New(env.s3); err != nil {
		return nil, err
	}
	if err := env.store.EnsureBucket(ctx); err != nil {
		return nil, err
	}
	return func(bool) error { return suite.Close(context.Background()) }, nil
}
