package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/devstack"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMonitoringMetricsHealth runs the server against a real Redis: the
// asynqmon page and its API list the queue holding an enqueued task,
// /metrics exports asynq's queue metrics, /healthz follows Redis.
func TestMonitoringMetricsHealth(t *testing.T) {
	dir, err := os.MkdirTemp("", "sandq-api-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	stack, err := devstack.Start(context.Background(), devstack.Options{Dir: dir, AccessKey: "api-test", SecretKey: "api-test-secret"})
	if err != nil {
		t.Fatalf("Redis and MinIO are needed (make test installs them): %v", err)
	}
	defer stack.Stop()
	opt := asynq.RedisClientOpt{Addr: stack.RedisAddr}
	c := asynq.NewClient(opt)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("job:run", []byte(`{}`)), asynq.Queue("reports")); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Redis: opt})
	defer s.Close()
	srv := httptest.NewServer(s)
	defer srv.Close()

	code, body := get(t, srv.URL+"/monitoring/")
	if code != 200 || !strings.Contains(strings.ToLower(body), "<html") {
		t.Errorf("/monitoring/: %d %.200s", code, body)
	}
	code, body = get(t, srv.URL+"/monitoring/api/queues")
	var queues struct {
		Queues []struct {
			Queue   string `json:"queue"`
			Pending int    `json:"pending"`
		} `json:"queues"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &queues) != nil || len(queues.Queues) != 1 || queues.Queues[0].Queue != "reports" || queues.Queues[0].Pending != 1 {
		t.Errorf("/monitoring/api/queues: %d %s", code, body)
	}
	code, body = get(t, srv.URL+"/metrics")
	if code != 200 || !strings.Contains(body, `asynq_queue_size{queue="reports"} 1`) {
		t.Errorf("/metrics: %d, no asynq_queue_size for reports", code)
	}
	if code, body = get(t, srv.URL+"/healthz"); code != 200 || !strings.Contains(body, `"ok":true`) {
		t.Errorf("/healthz with Redis up: %d %s", code, body)
	}
	stack.Stop()
	if code, body = get(t, srv.URL+"/healthz"); code != 503 || !strings.Contains(body, `"ok":false`) {
		t.Errorf("/healthz with Redis down: %d %s", code, body)
	}
}
