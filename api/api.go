// Package api is sandq's HTTP server for remote producers and operators:
// the job API under /v1 (bearer tokens, one tenant each), the asynqmon
// dashboard at /monitoring, Prometheus metrics at /metrics and /healthz.
package api

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	asynqmetrics "github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// OpenAPI is the API's OpenAPI document, served at /v1/openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// Config configures the server.
type Config struct {
	// Jobs is the producer configuration: Redis, caps, limits, queue.
	Jobs jobs.Config
	// Store holds jobs' files.
	Store *storage.Store
	// Auth lists tenants and tokens. Without it every /v1/jobs request is
	// refused with 401.
	Auth *AuthConfig
	// OpenMonitoring serves /monitoring without a token to clients on this
	// host: a loopback peer whose request carries no proxy header
	// (Forwarded, X-Forwarded-For, X-Forwarded-Host, X-Real-IP). It is
	// never implied by the address the server listens on (sandq serve
	// --open-dashboard; sandq dev sets it). Every other request to the
	// dashboard takes an operator token, as a bearer token or as the
	// password of basic auth.
	OpenMonitoring bool
	// Hosts are the names (the Host header: a host name or an IP address,
	// with an optional port; without one, any port) the server answers to.
	// The dashboard refuses every other name (421): a site whose name an
	// attacker points at the server (DNS rebinding) gets nothing. Empty:
	// localhost, 127.0.0.1 and [::1] on any port. See DefaultHosts.
	Hosts []string
	// StrictHosts applies Hosts to every request but /healthz, not only to
	// the dashboard's.
	StrictHosts bool
	// Timeouts bound slow clients; zero fields take their defaults.
	Timeouts Timeouts
	// PrometheusURL, if set, is where asynqmon's charts query metrics.
	PrometheusURL string
	Logger        *slog.Logger
}

// Server is the HTTP handler tree.
type Server struct {
	mux      *http.ServeMux
	mon      *asynqmon.HTTPHandler
	rdb      redis.UniversalClient
	insp     *asynq.Inspector
	client   *jobs.Client
	jobs     jobs.Config
	auth     *AuthConfig
	logger   *slog.Logger
	open     bool
	hosts    hostSet
	strict   bool
	cop      *http.CrossOriginProtection
	timeouts Timeouts
	reqs     *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New builds the server; Close releases its Redis connections.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Jobs = cfg.Jobs.WithDefaults()
	if cfg.Store == nil {
		return nil, errors.New("api: no object store configured")
	}
	hosts, err := parseHosts(cfg.Hosts)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	if err := cfg.Timeouts.validate(); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	client, err := jobs.NewClient(cfg.Jobs, cfg.Store, cfg.Logger)
	if err != nil {
		return nil, err
	}
	opt, err := cfg.Jobs.RedisConn()
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	rdb, err := cfg.Jobs.NewRedisClient()
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	s := &Server{
		mux: http.NewServeMux(), rdb: rdb, insp: asynq.NewInspectorFromRedisClient(rdb), client: client,
		jobs: cfg.Jobs, auth: cfg.Auth, logger: cfg.Logger, open: cfg.OpenMonitoring,
		hosts: hosts, strict: cfg.StrictHosts, cop: http.NewCrossOriginProtection(), timeouts: cfg.Timeouts,
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandq_api_requests_total", Help: "API requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sandq_api_request_duration_seconds", Help: "Time to answer API requests (event streams: until they end).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"route"}),
	}
	s.mon = asynqmon.New(asynqmon.Options{
		RootPath:          "/monitoring",
		RedisConnOpt:      opt,
		PrometheusAddress: cfg.PrometheusURL,
		// Job results are JSON documents; show them as such.
		ResultFormatter: asynqmon.ResultFormatterFunc(func(_ string, b []byte) string { return string(b) }),
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(asynqmetrics.NewQueueMetricsCollector(s.insp), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), s.reqs, s.latency)
	s.mux.Handle("/monitoring/", s.monitoring(s.mon))
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(OpenAPI)
	})
	for _, rt := range Routes {
		s.mux.Handle(rt.Method+" "+rt.Path, s.v1(rt.Path, rt.handler(s)))
	}
	s.mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiError(http.StatusNotFound, "not_found", "", "no such endpoint: "+r.Method+" "+r.URL.Path))
	})
	return s, nil
}

// Route is one authenticated endpoint of the job API.
type Route struct {
	Method, Path string
	handler      func(*Server) func(http.ResponseWriter, *http.Request, *principal)
}

// Routes are the job API's endpoints; the OpenAPI document describes each.
var Routes = []Route{
	{"POST", "/v1/jobs", func(s *Server) func(http.ResponseWriter, *http.Request, *principal) { return s.submit }},
	{"GET", "/v1/jobs", func(s *Server) func(http.ResponseWriter, *http.Request, *principal) { return s.listJobs }},
	{"GET", "/v1/jobs/{id}", func(s *Server) func(http.ResponseWriter, *http.Request, *principal) { return s.getJob }},
	{"POST", "/v1/jobs/{id}/cancel", func(s *Server) func(http.ResponseWriter, *http.Request, *principal) { return s.cancelJob }},
	{"GET", "/v1/jobs/{id}/events", func(s *Server) func(http.ResponseWriter, *http.Request, *principal) { return s.events }},
}

// ServeHTTP serves the tree, under the timeouts, to the allowed hosts
// (all of it with StrictHosts; the dashboard always).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.withDeadlines(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.strict && r.URL.Path != "/healthz" && !s.hosts.allows(r.Host) {
			writeError(w, misdirected(r.Host))
			return
		}
		s.mux.ServeHTTP(w, r)
	}))
}

// Close releases Redis connections.
func (s *Server) Close() error {
	s.mon.Close()
	s.client.Close()
	return s.rdb.Close()
}

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// v1 authenticates a request, applies its tenant's rate limit, and counts
// it in the metrics under its route.
func (s *Server) v1(route string, h func(http.ResponseWriter, *http.Request, *principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			s.reqs.WithLabelValues(route, r.Method, strconv.Itoa(sw.code)).Inc()
			s.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		p, err := s.auth.authenticate(r, false)
		if err != nil {
			sw.Header().Set("WWW-Authenticate", `Bearer realm="sandq"`)
			writeError(sw, apiError(http.StatusUnauthorized, "unauthenticated", "", err.Error()))
			return
		}
		wait, err := allow(r.Context(), s.rdb, p.tenant, p.t)
		if err != nil {
			writeError(sw, classify(err))
			return
		}
		if wait > 0 {
			e := apiError(http.StatusTooManyRequests, "rate_limited", "", "tenant "+p.tenant+" is over its request rate; retry after "+wait.Round(time.Millisecond).String())
			e.retryAfter = wait
			writeError(sw, e)
			return
		}
		h(sw, r, p)
	})
}

// monitoring guards the dashboard. It shows every tenant's payloads and
// results and can delete and run tasks, so:
//
//   - it answers only the server's own names (DNS rebinding: a page whose
//     name an attacker points at this server reaches it from the victim's
//     browser, on the victim's network);
//   - it refuses cross-site requests that change state, and framing:
//     browsers send cached basic-auth credentials along with both;
//   - without a token it opens only to clients on this host, and only when
//     configured to (OpenMonitoring); otherwise it takes an operator token.
func (s *Server) monitoring(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hosts.allows(r.Host) {
			writeError(w, misdirected(r.Host))
			return
		}
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "frame-ancestors 'none'")
		w.Header().Set("Cross-Origin-Resource-Policy", "same-origin")
		if err := s.cop.Check(r); err != nil {
			writeError(w, apiError(http.StatusForbidden, "forbidden", "", "the dashboard refuses a cross-site "+r.Method+" ("+err.Error()+"): its actions are taken from its own pages"))
			return
		}
		if !s.open || !fromThisHost(r) {
			p, err := s.auth.authenticate(r, true)
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Basic realm="sandq monitoring", charset="UTF-8"`)
				writeError(w, apiError(http.StatusUnauthorized, "unauthenticated", "", err.Error()+"; the dashboard takes an operator token, as a bearer token or as the basic-auth password"))
				return
			}
			if !p.t.Operator {
				writeError(w, apiError(http.StatusForbidden, "forbidden", "", "tenant "+p.tenant+" is not an operator; the dashboard takes an operator token"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// healthz answers 200 when Redis answers, 503 otherwise, as JSON.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ok": false, "redis": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}
