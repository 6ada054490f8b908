// Package s3compat runs the core of sandq end to end — the bucket and its
// expiry rule prepared as `sandq s3 setup` does, a job enqueued with an
// input, run by a worker in a real runsc sandbox, its outputs and logs
// downloaded through their presigned links — against S3 servers other than
// the single MinIO the other suites use: SeaweedFS, and a distributed,
// erasure-coded MinIO with one node killed while the job runs. It proves
// that sandq speaks plain S3 and needs no MinIO-only behaviour.
//
// Under -short the whole suite is skipped; otherwise a missing runsc,
// Redis, weed, minio or image fails it.
package s3compat

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
)

var env struct {
	suite *sandqtest.Env
	state string
}

func TestMain(m *testing.M) {
	os.Exit(testenv.RunSuite(m, "s3compat", "root, runsc, Redis, MinIO, SeaweedFS (weed) and the built images", setup))
}

// setup starts Redis (and the suite's single MinIO, unused here) and
// checks that this machine has all the suite runs.
func setup(ctx context.Context) (func(failed bool) error, error) {
	suite, err := sandqtest.Start(ctx, sandqtest.Options{Name: "s3compat", RootKey: "s3compat-root", RootSecret: "s3compat-root-secret", Programs: []string{"weed"}})
	if err != nil {
		return nil, err
	}
	env.suite = suite
	env.state = filepath.Join(suite.Dir, "state")
	if err := os.MkdirAll(env.state, 0o700); err != nil {
		return nil, errors.Join(err, suite.Close(ctx))
	}
	return func(bool) error { return suite.Close(context.Background()) }, nil
}
