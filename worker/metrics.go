package worker

import (
	"net/http"
	"path/filepath"
	"sync"

	"github.com/hibiken/asynq"
	asynqmetrics "github.com/hibiken/asynq/x/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
)

// Metrics are a worker's Prometheus metrics: sandq's own, asynq's queue
// metrics, and the Go runtime's.
type Metrics struct {
	reg               *prometheus.Registry
	jobsFinished      *prometheus.CounterVec
	jobDuration       *prometheus.HistogramVec
	queueWait         *prometheus.HistogramVec
	sandboxStart      prometheus.Histogram
	uploadedBytes     prometheus.Counter
	egressRequests    *prometheus.CounterVec
	egressBypass      prometheus.Counter
	webhookDeliveries *prometheus.CounterVec
	jobStarts         *prometheus.CounterVec
	liveDroppedBytes  prometheus.Counter
}

// NewMetrics makes a registry with sandq's metrics and asynq's queue
// metrics read through insp.
func NewMetrics(insp *asynq.Inspector) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.jobsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandq_jobs_finished_total", Help: "Jobs that reached a final status, by queue and status.",
	}, []string{"queue", "status"})
	m.jobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sandq_job_duration_seconds", Help: "Run time of jobs' scripts, start to exit.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
	}, []string{"queue"})
	m.queueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sandq_job_queue_wait_seconds", Help: "Time from enqueue to the start of the attempt that finished the job.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 20),
	}, []string{"queue"})
	m.sandboxStart = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sandq_sandbox_start_seconds", Help: "Time to create and start a sandbox.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	})
	m.uploadedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sandq_uploaded_bytes_total", Help: "Bytes of outputs and logs uploaded to the object store.",
	})
	m.egressRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandq_egress_requests_total", Help: "Requests through the egress proxy, by decision (allowed, refused, failed).",
	}, []string{"decision"})
	m.egressBypass = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sandq_egress_bypass_attempts_total", Help: "Packets networked jobs sent around their egress proxy, refused by the firewall (each connection attempt or datagram is one).",
	})
	m.webhookDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandq_webhook_deliveries_total", Help: "Webhook delivery attempts, by outcome (delivered, retry, failed, gone).",
	}, []string{"outcome"})
	m.jobStarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandq_job_starts_total", Help: "Finished jobs that had a sandbox, by queue and how its container came to run them (start_mode: cold, warm, restored).",
	}, []string{"queue", "start_mode"})
	m.liveDroppedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sandq_live_output_dropped_bytes_total", Help: "Bytes of jobs' stdout and stderr left out of their live output streams in Redis: past --live-output-size in an attempt, or while Redis fell behind.",
	})
	m.reg.MustRegister(m.jobsFinished, m.jobDuration, m.queueWait, m.sandboxStart, m.uploadedBytes, m.egressRequests, m.egressBypass, m.webhookDeliveries, m.jobStarts, m.liveDroppedBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if insp != nil {
		m.reg.MustRegister(asynqmetrics.NewQueueMetricsCollector(insp))
	}
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// workerGauges registers the busy and capacity gauges of a worker.
func (m *Metrics) workerGauges(running func() int, concurrency int) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_worker_jobs_running", Help: "Jobs this worker runs now (busy slots)."},
			func() float64 { return float64(running()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_worker_concurrency", Help: "Jobs this worker may run at once; idle slots are this minus sandq_worker_jobs_running."},
			func() float64 { return float64(concurrency) }),
	)
}

// warmGauges registers the gauges and counters of a worker's warm pool.
func (m *Metrics) warmGauges(p *executor.WarmRunner) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_warm_sandboxes_ready", Help: "Sandboxes created ahead of demand that wait for a job."},
			func() float64 { return float64(p.Ready()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_warm_sandbox_hits_total", Help: "Jobs that found a warm sandbox ready."},
			func() float64 { h, _, _ := p.Stats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_warm_sandbox_misses_total", Help: "Jobs of the warm shape that found none ready and made their own."},
			func() float64 { _, m, _ := p.Stats(); return float64(m) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_warm_sandbox_failures_total", Help: "Warm sandboxes the worker failed to make."},
			func() float64 { _, _, f := p.Stats(); return float64(f) }),
	)
}

// snapshotSource is what the snapshot metrics read: an
// executor.SnapshotRunner.
type snapshotSource interface {
	Stats() (restored, fallbacks, quarantined int64)
	PoolStats() (ready int, hits, misses int64)
	Templates() []*executor.Template
}

var _ snapshotSource = (*executor.SnapshotRunner)(nil)

// snapshotGauges registers the metrics of a worker's snapshot templates
// and their restore pools (--snapshots, --snapshot-pool). They are read
// from the runner at each scrape, as the warm pool's are.
func (m *Metrics) snapshotGauges(p snapshotSource) {
	m.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_snapshot_restores_total", Help: "Containers restored from a snapshot template, for jobs or ahead of them into restore pools."},
			func() float64 { r, _, _ := p.Stats(); return float64(r) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_snapshot_fallbacks_total", Help: "Jobs whose restore from a snapshot template failed and that started cold instead."},
			func() float64 { _, f, _ := p.Stats(); return float64(f) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_snapshot_templates_quarantined_total", Help: "Snapshot templates quarantined after a failed restore; their jobs start cold until the worker's next start."},
			func() float64 { _, _, q := p.Stats(); return float64(q) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_snapshot_templates", Help: "Snapshot templates jobs start from now (built and not quarantined)."},
			func() float64 { return float64(len(p.Templates())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_snapshot_pool_ready", Help: "Sandboxes restored ahead of demand that wait for a job, summed over the templates' pools."},
			func() float64 { r, _, _ := p.PoolStats(); return float64(r) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_snapshot_pool_hits_total", Help: "Jobs that found a sandbox restored ahead of them ready."},
			func() float64 { _, h, _ := p.PoolStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sandq_snapshot_pool_misses_total", Help: "Jobs of a restore pool's shape that found none ready and were restored on their path."},
			func() float64 { _, _, m := p.PoolStats(); return float64(m) }),
		&templateBuildCollector{p: p, vec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sandq_snapshot_template_build_seconds", Help: "How long each image's snapshot template took to make (preload and checkpoint), as recorded when it was built; a template found on disk keeps its build's figure.",
		}, []string{"image"})},
	)
}

// templateBuildCollector reports the build time of the templates in use
// at each scrape, so that a quarantined template's series goes away.
type templateBuildCollector struct {
	p   snapshotSource
	vec *prometheus.GaugeVec
	mu  sync.Mutex
}

func (c *templateBuildCollector) Describe(ch chan<- *prometheus.Desc) { c.vec.Describe(ch) }

func (c *templateBuildCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vec.Reset()
	for _, t := range c.p.Templates() {
		c.vec.WithLabelValues(templateImage(t)).Set(float64(t.Info.PreloadMS+t.Info.CheckpointMS) / 1000)
	}
	c.vec.Collect(ch)
}

// templateImage is the name of a template's image: its directory is
// IMAGE_DIR/NAME/templates/KEY.
func templateImage(t *executor.Template) string {
	return filepath.Base(filepath.Dir(filepath.Dir(t.Dir)))
}

// memoryGauges registers the memory budget gauges of a worker.
func (m *Metrics) memoryGauges(b *memoryBudget) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_worker_memory_budget_bytes", Help: "Sum of job memory limits this worker may run at once."},
			func() float64 { return float64(b.total) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_worker_memory_reserved_bytes", Help: "Sum of the memory limits of the jobs whose sandboxes exist now."},
			func() float64 { return float64(b.reserved.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sandq_worker_jobs_waiting_for_memory", Help: "Jobs taken from the queue that wait for room in the memory budget (counted in sandq_worker_jobs_running too)."},
			func() float64 { return float64(b.waiting.Load()) }),
	)
}

// observe records a finished job.
func (m *Metrics) observe(res *jobs.Result) {
	if m == nil || res == nil {
		return
	}
	m.jobsFinished.WithLabelValues(res.Queue, string(res.Status)).Inc()
	if res.Timings == nil {
		return
	}
	m.jobDuration.WithLabelValues(res.Queue).Observe(float64(res.DurationMS) / 1000)
	m.queueWait.WithLabelValues(res.Queue).Observe(float64(res.Timings.QueueWaitMS) / 1000)
	if mode := res.Timings.StartMode; mode != "" {
		m.jobStarts.WithLabelValues(res.Queue, mode).Inc()
	}
	if res.Timings.SandboxStartMS > 0 {
		m.sandboxStart.Observe(float64(res.Timings.SandboxStartMS) / 1000)
	}
	// Counted at upload: a result over its size cap lists fewer outputs.
	m.uploadedBytes.Add(float64(res.UploadedBytes))
	if e := res.Egress; e != nil {
		// The counts, not the listed requests: the list is capped.
		m.egressRequests.WithLabelValues(jobs.EgressAllowed).Add(float64(e.Allowed))
		m.egressRequests.WithLabelValues(jobs.EgressRefused).Add(float64(e.Refused))
		m.egressRequests.WithLabelValues(jobs.EgressFailed).Add(float64(e.Failed))
		if e.Bypass != nil {
			m.egressBypass.Add(float64(e.Bypass.Attempts))
		}
	}
}

// liveDropped counts bytes left out of a job's live output.
func (m *Metrics) liveDropped(n int64) {
	if m != nil {
		m.liveDroppedBytes.Add(float64(n))
	}
}

func (m *Metrics) delivery(outcome string) {
	if m != nil {
		m.webhookDeliveries.WithLabelValues(outcome).Inc()
	}
}
