package dashboards

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// metricsSources are the Go files that define sandq's Prometheus metrics:
// the workers' and the API server's.
var metricsSources = []string{"../worker/metrics.go", "../api/api.go"}

// metricsSource names them in messages.
var metricsSource = strings.Join(metricsSources, ", ")

// asynqMetrics are the metrics of asynq's queue collector, which sandq
// workers register. Source: the Desc definitions (namespace "asynq") in
// github.com/hibiken/asynq/x@v0.0.0-20211219150637-8dfabfccb3be/metrics/metrics.go.
// None of them is a histogram.
var asynqMetrics = []string{
	"asynq_tasks_enqueued_total",
	"asynq_queue_size",
	"asynq_queue_latency_seconds",
	"asynq_queue_memory_usage_approx_bytes",
	"asynq_tasks_processed_total",
	"asynq_tasks_failed_total",
	"asynq_queue_paused_total",
}

var (
	// nameRE finds the metric names in the metrics source.
	nameRE = regexp.MustCompile(`Name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
	// histogramRE finds the names of histograms (which have _bucket, _count and _sum series).
	histogramRE = regexp.MustCompile(`HistogramOpts\{\s*Name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
	// metricRefRE finds sandq and asynq metric names in a PromQL expression.
	metricRefRE = regexp.MustCompile(`\b(?:sandq|asynq)_[a-zA-Z0-9_:]*`)
	// stringRE matches PromQL string literals, which may hold label values
	// that look like metric names.
	stringRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
)

// knownMetrics maps the name of every metric that exists to whether it is a histogram.
func knownMetrics(t *testing.T) map[string]bool {
	t.Helper()
	var src []byte
	for _, f := range metricsSources {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read metrics source: %v", err)
		}
		src = append(src, b...)
	}
	known := map[string]bool{}
	for _, m := range nameRE.FindAllStringSubmatch(string(src), -1) {
		known[m[1]] = false
	}
	for _, m := range histogramRE.FindAllStringSubmatch(string(src), -1) {
		known[m[1]] = true
	}
	// Guard against the regexps silently missing the source's metrics.
	for _, want := range []string{"sandq_jobs_finished_total", "sandq_worker_jobs_running", "sandq_api_requests_total"} {
		if _, ok := known[want]; !ok {
			t.Fatalf("%s: did not find metric %s; has the source changed shape?", metricsSource, want)
		}
	}
	if !known["sandq_job_duration_seconds"] {
		t.Fatalf("%s: did not find histogram sandq_job_duration_seconds", metricsSource)
	}
	for _, n := range asynqMetrics {
		known[n] = false
	}
	return known
}

// metricRefs returns the sandq_* and asynq_* metric names expr uses.
func metricRefs(expr string) []string {
	return metricRefRE.FindAllString(stringRE.ReplaceAllString(expr, `""`), -1)
}

// checkMetric says whether ref is a series of a known metric; a histogram's
// series are its _bucket, _count and _sum.
func checkMetric(known map[string]bool, ref string) bool {
	if _, ok := known[ref]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(ref, suffix); ok && known[base] {
			return true
		}
	}
	return false
}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		Expr       string      `json:"expr"`
		RefID      string      `json:"refId"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// allPanels flattens the panels, including those inside rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func dashboardFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("grafana", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no dashboards in grafana/dashboards")
	}
	return files
}

func TestDashboards(t *testing.T) {
	known := knownMetrics(t)
	uids := map[string]string{}
	for _, file := range dashboardFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var d dashboard
			if err := json.Unmarshal(raw, &d); err != nil {
				t.Fatalf("parse: %v", err)
			}
			if d.UID == "" {
				t.Error("no uid")
			}
			if other, dup := uids[d.UID]; dup {
				t.Errorf("uid %q also used by %s", d.UID, other)
			}
			uids[d.UID] = file
			if d.Title == "" {
				t.Error("no title")
			}
			if d.SchemaVersion == 0 {
				t.Error("no schemaVersion")
			}
			if len(d.Panels) == 0 {
				t.Fatal("no panels")
			}
			vars := map[string]bool{}
			for _, v := range d.Templating.List {
				vars[v.Name] = true
			}

			ids := map[int]bool{}
			used := map[string]bool{}
			queries, rows := 0, 0
			for _, p := range allPanels(d.Panels) {
				if p.Title == "" {
					t.Errorf("panel %d has no title", p.ID)
				}
				if ids[p.ID] {
					t.Errorf("panel id %d used twice", p.ID)
				}
				ids[p.ID] = true
				if p.Type == "row" {
					rows++
					continue
				}
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no targets", p.Title)
				}
				if p.Datasource == nil || p.Datasource.UID != "prometheus" {
					t.Errorf("panel %q: datasource is not uid prometheus", p.Title)
				}
				for _, tg := range p.Targets {
					if strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("panel %q target %s: empty expr", p.Title, tg.RefID)
						continue
					}
					queries++
					if tg.Datasource != nil && tg.Datasource.UID != "prometheus" {
						t.Errorf("panel %q target %s: datasource uid %q", p.Title, tg.RefID, tg.Datasource.UID)
					}
					if strings.Contains(tg.Expr, "$queue") && !vars["queue"] {
						t.Errorf("panel %q target %s uses $queue but there is no queue variable", p.Title, tg.RefID)
					}
					refs := metricRefs(tg.Expr)
					if len(refs) == 0 {
						t.Errorf("panel %q target %s: no sandq_/asynq_ metric in %q", p.Title, tg.RefID, tg.Expr)
					}
					for _, ref := range refs {
						used[ref] = true
						if !checkMetric(known, ref) {
							t.Errorf("panel %q target %s: metric %s does not exist (not in %s nor asynq's collector)", p.Title, tg.RefID, ref, metricsSource)
						}
					}
				}
			}
			names := make([]string, 0, len(used))
			for n := range used {
				names = append(names, n)
			}
			sort.Strings(names)
			t.Logf("%s: %d rows, %d panels, %d queries, metrics: %s", d.UID, rows, len(ids)-rows, queries, strings.Join(names, ", "))
		})
	}
}

// TestCheckMetric makes sure the check rejects metrics that do not exist.
func TestCheckMetric(t *testing.T) {
	known := knownMetrics(t)
	for _, tc := range []struct {
		expr string
		ok   bool
	}{
		{`sum by (status) (rate(sandq_jobs_finished_total[5m]))`, true},
		{`histogram_quantile(0.9, sum by (le) (rate(sandq_job_duration_seconds_bucket[5m])))`, true},
		{`rate(sandq_job_queue_wait_seconds_count[5m])`, true},
		{`max by (queue) (asynq_queue_size)`, true},
		{`sum(rate(sandq_jobs_total[5m]))`, false},
		{`asynq_queue_depth`, false},
		{`sandq_jobs_finished_total_bucket`, false}, // not a histogram
		{`sandq_jobs_finished`, false},
		{`sandq_jobs_finished_total{queue="sandq_nope"}`, true}, // label values are not metrics
	} {
		ok := true
		for _, ref := range metricRefs(tc.expr) {
			ok = ok && checkMetric(known, ref)
		}
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.expr, ok, tc.ok)
		}
	}
}

func TestPrometheusConfig(t *testing.T) {
	raw, err := os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	// Drop comments, so commented-out examples do not count.
	var lines []string
	for _, l := range strings.Split(string(raw), "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	cfg := strings.Join(lines, "\n")
	if strings.Contains(cfg, "\t") {
		t.Error("prometheus.yml has tabs; YAML indents with spaces")
	}
	for _, want := range []string{
		"scrape_configs:",
		"scrape_interval: 15s",
		"job_name: sandq-workers",
		"worker:9464",
		"metrics_path: /metrics",
		"job_name: prometheus",
		"localhost:9090",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("prometheus.yml: missing %q", want)
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	for file, wants := range map[string][]string{
		"grafana/provisioning/datasources/prometheus.yml": {
			"apiVersion: 1", "name: Prometheus", "uid: prometheus", "type: prometheus",
			"url: http://prometheus:9090", "isDefault: true",
		},
		"grafana/provisioning/dashboards/sandq.yml": {
			"apiVersion: 1", "type: file", "path: /var/lib/grafana/dashboards",
		},
	} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, want := range wants {
			if !strings.Contains(string(raw), want) {
				t.Errorf("%s: missing %q", file, want)
			}
		}
	}
}
