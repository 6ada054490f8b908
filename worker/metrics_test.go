package worker

import (
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
)

// scrape reads the metrics as Prometheus would: series (name and labels)
// to value.
func scrape(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// fakeSnapshots stands in for a SnapshotRunner: the metrics only read it.
type fakeSnapshots struct {
	restored, fallbacks, quarantined int64
	ready                            int
	hits, misses                     int64
	templates                        []*executor.Template
}

func (f *fakeSnapshots) Stats() (int64, int64, int64) {
	return f.restored, f.fallbacks, f.quarantined
}

func (f *fakeSnapshots) PoolStats() (int, int64, int64) { return f.ready, f.hits, f.misses }

func (f *fakeSnapshots) Templates() []*executor.Template { return f.templates }

// TestSnapshotMetrics: each snapshot metric reads its own figure of the
// runner (all figures differ, so a swapped one shows), at each scrape, and
// a template quarantined since the last scrape loses its build time series.
func TestSnapshotMetrics(t *testing.T) {
	f := &fakeSnapshots{restored: 11, fallbacks: 2, quarantined: 1, ready: 3, hits: 7, misses: 5, templates: []*executor.Template{
		{Dir: "/var/lib/sandq/images/analysis/templates/k1", Info: executor.TemplateInfo{PreloadMS: 2700, CheckpointMS: 300}},
		{Dir: "/var/lib/sandq/images/default/templates/k2", Info: executor.TemplateInfo{PreloadMS: 1200, CheckpointMS: 250}},
	}}
	m := NewMetrics(nil)
	m.snapshotGauges(f)
	want := map[string]float64{
		"sandq_snapshot_restores_total":                           11,
		"sandq_snapshot_fallbacks_total":                          2,
		"sandq_snapshot_templates_quarantined_total":              1,
		"sandq_snapshot_templates":                                2,
		"sandq_snapshot_pool_ready":                               3,
		"sandq_snapshot_pool_hits_total":                          7,
		"sandq_snapshot_pool_misses_total":                        5,
		`sandq_snapshot_template_build_seconds{image="analysis"}`: 3,
		`sandq_snapshot_template_build_seconds{image="default"}`:  1.45,
	}
	got := scrape(t, m)
	for series, v := range want {
		if g, ok := got[series]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", series, g, ok, v)
		}
	}
	// Read at each scrape, not at registration.
	f.restored, f.ready, f.templates = 12, 2, f.templates[1:]
	got = scrape(t, m)
	if got["sandq_snapshot_restores_total"] != 12 || got["sandq_snapshot_pool_ready"] != 2 || got["sandq_snapshot_templates"] != 1 {
		t.Errorf("after a change: restores %v, pool ready %v, templates %v; want 12, 2, 1",
			got["sandq_snapshot_restores_total"], got["sandq_snapshot_pool_ready"], got["sandq_snapshot_templates"])
	}
	if v, ok := got[`sandq_snapshot_template_build_seconds{image="analysis"}`]; ok {
		t.Errorf("a quarantined template's build time is still reported: %v", v)
	}
	if got[`sandq_snapshot_template_build_seconds{image="default"}`] != 1.45 {
		t.Errorf("the remaining template's build time is gone: %v", got)
	}
}

// TestSnapshotMetricsOnlyWithSnapshots: a worker without --snapshots has
// no snapshot series, as one without --warm-sandboxes has no warm ones.
func TestSnapshotMetricsOnlyWithSnapshots(t *testing.T) {
	for series := range scrape(t, NewMetrics(nil)) {
		if strings.HasPrefix(series, "sandq_snapshot_") {
			t.Errorf("without snapshots: %s", series)
		}
	}
}

// TestJobStartsByMode: finished jobs are counted by queue and start mode;
// one cancelled before it had a sandbox (no start mode) is not.
func TestJobStartsByMode(t *testing.T) {
	m := NewMetrics(nil)
	for _, r := range []struct{ queue, mode string }{
		{"default", jobs.StartRestored}, {"default", jobs.StartRestored}, {"default", jobs.StartCold},
		{"bulk", jobs.StartWarm}, {"default", ""},
	} {
		m.observe(&jobs.Result{Queue: r.queue, Status: jobs.StatusSucceeded, Timings: &jobs.Timings{StartMode: r.mode}})
	}
	got := scrape(t, m)
	for series, v := range map[string]float64{
		`sandq_job_starts_total{queue="default",start_mode="restored"}`: 2,
		`sandq_job_starts_total{queue="default",start_mode="cold"}`:     1,
		`sandq_job_starts_total{queue="bulk",start_mode="warm"}`:        1,
		`sandq_jobs_finished_total{queue="default",status="succeeded"}`: 4,
	} {
		if got[series] != v {
			t.Errorf("%s = %v, want %v", series, got[series], v)
		}
	}
	for series := range got {
		if strings.HasPrefix(series, "sandq_job_starts_total") && strings.Contains(series, `start_mode=""`) {
			t.Errorf("a job without a sandbox counted: %s", series)
		}
	}
}
