package e2e

import (
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
)

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	t.Cleanup(func() { c.Close() })
	return c
}

// extraWorker is a worker a test starts beside the shared one.
type extraWorker struct {
	worker *jobs.Worker
	runner *executor.RunscRunner
	client *jobs.Client
	// stop shuts the worker down (once; also when the test ends).
	stop func()
}

// startWorker starts a worker with cfg on a runner of its own, and a
// client with the same config; all of it stops when the test ends.
func startWorker(t *testing.T, cfg jobs.Config, rc executor.RunscConfig) *extraWorker {
	t.Helper()
	ctx := context.Background()
	runner, err := executor.NewRunscRunner(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runner.Close(ctx) })
	w, err := jobs.NewWorker(cfg, runner, env.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	x := &extraWorker{worker: w, runner: runner, stop: func() { once.Do(w.Shutdown) }}
	t.Cleanup(x.stop)
	if x.client, err = jobs.NewClient(cfg, env.store, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.client.Close() })
	return x
}

// workerMetric reads one sample of a worker's /metrics.
func workerMetric(t *testing.T, w *jobs.Worker, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	w.Metrics().Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
