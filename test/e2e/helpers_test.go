package e2e

import (
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	t.Cleanup(func() { c.Close() })
	return c
}

// startWorker starts a worker beside the shared one, with cfg on a runner
// of its own, and a client with the same config; all of it stops when the
// test ends.
func startWorker(t *testing.T, cfg jobs.Config, rc executor.RunscConfig) *sandqtest.Worker {
	t.Helper()
	return sandqtest.NewWorker(t, cfg, rc, env.store)
}

// workerMetric reads one sample of a worker's /metrics.
func workerMetric(t *testing.T, w *worker.Worker, name string) float64 {
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
