// Package api is sandq's HTTP server for operators and remote producers.
// Today it serves the asynqmon dashboard at /monitoring, Prometheus metrics
// of the queues at /metrics and a health check at /healthz; the job API
// (/v1/jobs) comes next.
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/hibiken/asynq"
	asynqmetrics "github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// Config configures the server.
type Config struct {
	// Redis is where the queues are.
	Redis asynq.RedisClientOpt
	// PrometheusURL, if set, is where asynqmon's charts query metrics.
	PrometheusURL string
	Logger        *slog.Logger
}

// Server is the HTTP handler tree.
type Server struct {
	mux  *http.ServeMux
	mon  *asynqmon.HTTPHandler
	rdb  redis.UniversalClient
	insp *asynq.Inspector
}

// New builds the server; Close releases its Redis connections.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rdb := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	s := &Server{mux: http.NewServeMux(), rdb: rdb, insp: asynq.NewInspectorFromRedisClient(rdb)}
	s.mon = asynqmon.New(asynqmon.Options{
		RootPath:          "/monitoring",
		RedisConnOpt:      cfg.Redis,
		PrometheusAddress: cfg.PrometheusURL,
		// Job results are JSON documents; show them as such.
		ResultFormatter: asynqmon.ResultFormatterFunc(func(_ string, b []byte) string { return string(b) }),
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(asynqmetrics.NewQueueMetricsCollector(s.insp), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.mux.Handle("/monitoring/", s.mon)
	s.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux.HandleFunc("/healthz", s.healthz)
	return s
}

// ServeHTTP serves the tree.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Close releases Redis connections.
func (s *Server) Close() error {
	s.mon.Close()
	return s.rdb.Close()
}

// healthz answers 200 when Redis answers, 503 otherwise, as JSON.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]any{"ok": false, "redis": err.Error()})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"ok": true})
}
