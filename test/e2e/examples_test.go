package e2e

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// analysisImage is the image the examples in examples/ run on; `make test`
// builds it from images/analysis.packages and images/analysis.overlay.
const analysisImage = "analysis"

// examplesWorker is a worker of its own whose image is analysisImage,
// serving one queue on which jobs may reach the npm registry.
type examplesWorker struct {
	client *jobs.Client
	queue  string
}

func startExamplesWorker(t *testing.T) *examplesWorker {
	t.Helper()
	if _, err := image.Resolve(env.cfg.Worker.ImageDir, analysisImage); err != nil {
		t.Fatalf("the %s image: %v\n(make test builds it: sandq image build %s --packages-file images/analysis.packages --overlay images/analysis.overlay)", analysisImage, err, analysisImage)
	}
	const queue = "examples"
	cfg := env.cfg
	cfg.Worker.Image = analysisImage
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 2
	cfg.Worker.ShutdownGrace = time.Second
	cfg.Egress.Queues = map[string]jobs.QueueEgress{queue: {Max: []string{"npm"}, Default: []string{"npm"}}}
	s := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state, Network: &executor.NetworkConfig{}})
	return &examplesWorker{client: s.Client, queue: queue}
}

// run submits a job on the worker's queue and waits for it to succeed.
func (e *examplesWorker) run(t *testing.T, sub jobs.Submission) *jobs.Result {
	t.Helper()
	sub.Queue = e.queue
	if sub.Limits.TimeoutSeconds == 0 {
		sub.Limits.TimeoutSeconds = 240
	}
	enq, err := e.client.Enqueue(context.Background(), sub)
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	st, err := e.client.Wait(ctx, enq.ID, nil)
	if err != nil {
		t.Fatalf("wait for %s: %v (last state %+v)", enq.ID, err, st)
	}
	r := st.Result
	wantStatus(t, r, jobs.StatusSucceeded)
	t.Logf("%s ran in %dms\nstdout:\n%s", sub.Script.Name, r.DurationMS, r.Stdout.Tail)
	if r.Stderr.Tail != "" {
		t.Logf("stderr:\n%s", r.Stderr.Tail)
	}
	return r
}

// example is a file of examples/ as a job file named by its base name.
func example(t *testing.T, name string) jobs.File {
	t.Helper()
	f, err := jobs.LocalFile(filepath.Join("..", "..", "examples", name), name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// outputs downloads a result's outputs, by path, and checks that they are
// exactly the paths wanted, each non-empty.
func outputs(t *testing.T, r *jobs.Result, want ...string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	var paths []string
	for _, o := range r.Outputs {
		got[o.Path] = download(t, o.URL)
		paths = append(paths, o.Path)
		if len(got[o.Path]) == 0 {
			t.Errorf("output %s is empty", o.Path)
		}
	}
	if strings.Join(paths, ",") != strings.Join(want, ",") {
		t.Fatalf("outputs %v, want %v", paths, want)
	}
	return got
}

// wantXLSX checks that b is an XLSX workbook: a zip with xl/workbook.xml,
// and the other entries named.
func wantXLSX(t *testing.T, name string, b []byte, entries ...string) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("PK\x03\x04")) {
		t.Fatalf("%s is not a zip: starts %q", name, b[:min(len(b), 8)])
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	have := map[string]bool{}
	for _, f := range zr.File {
		have[f.Name] = true
	}
	for _, e := range append([]string{"xl/workbook.xml", "[Content_Types].xml"}, entries...) {
		if !have[e] {
			t.Errorf("%s has no %s", name, e)
		}
	}
}

// TestExamplesOnAnalysisImage runs the examples of the README's "Examples"
// section end to end on the analysis image, on a worker of their own, and
// checks their outputs by type. It fails, not skips, when the image is
// missing.
func TestExamplesOnAnalysisImage(t *testing.T) {
	e := startExamplesWorker(t)

	t.Run("image", func(t *testing.T) {
		// What the examples and the README promise: the tools, the Python
		// modules, a headless matplotlib with its fonts, pip's settings and
		// an offline venv.
		r := e.run(t, jobs.Submission{Script: file(t, "check.sh", `set -e
for tool in python3 pip node npm dot sqlite3 jq git curl unzip; do command -v $tool >/dev/null || { echo "missing $tool"; exit 1; }; done
dot -V 2>&1
sqlite3 --version | cut -d' ' -f1 | sed 's/^/sqlite3 /'
python3 - <<'PY'
import matplotlib, numpy, pandas, scipy, openpyxl, PIL, graphviz, sqlite3
import matplotlib.pyplot as plt
from matplotlib import font_manager as fm
print("backend", matplotlib.get_backend())
print("font", fm.findfont(fm.FontProperties(family=["DejaVu Sans"]), fallback_to_default=False))
print("font", fm.findfont(fm.FontProperties(family=["Liberation Sans"]), fallback_to_default=False))
print("modules ok, sqlite", sqlite3.sqlite_version)
PY
pip config list
python3 -m venv /work/venv
/work/venv/bin/python -c 'import sys; print("venv", sys.prefix)'
/work/venv/bin/pip --version | cut -d' ' -f1,2
`)})
		for _, want := range []string{
			"graphviz version", "sqlite3 3.", "backend agg",
			"font /usr/share/matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf",
			"font /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
			"modules ok", "global.break-system-packages='true'", "venv /work/venv", "pip 23.",
		} {
			if !strings.Contains(r.Stdout.Tail+r.Stderr.Tail, want) {
				t.Errorf("no %q in the output", want)
			}
		}
	})

	t.Run("inputs are reproducible", func(t *testing.T) {
		// The committed budget.xlsx, actuals.csv and shop.db are what the
		// generator makes on this image, byte for byte.
		r := e.run(t, jobs.Submission{Script: example(t, "make_example_inputs.py"), Inputs: []jobs.File{example(t, "shop.sql")}})
		for name, b := range outputs(t, r, "actuals.csv", "budget.xlsx", "shop.db") {
			committed, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, committed) {
				t.Errorf("examples/%s differs from what make_example_inputs.py makes on the %s image (%d bytes, committed %d); regenerate it (README, Examples)", name, analysisImage, len(b), len(committed))
			}
		}
	})

	t.Run("spreadsheet to chart and workbook", func(t *testing.T) {
		r := e.run(t, jobs.Submission{Script: example(t, "budget_report.py"), Inputs: []jobs.File{example(t, "budget.xlsx"), example(t, "actuals.csv")}})
		out := outputs(t, r, "budget_summary.xlsx", "budget_vs_actual.png")
		if png := out["budget_vs_actual.png"]; !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("budget_vs_actual.png is not a PNG: starts %q", png[:min(len(png), 8)])
		}
		wantXLSX(t, "budget_summary.xlsx", out["budget_summary.xlsx"], "xl/worksheets/sheet1.xml", "xl/worksheets/sheet2.xml", "xl/charts/chart1.xml")
		for _, want := range []string{`BarChart "Monthly budget by department" on sheet Budget, 3 series x 12 months`, "actuals.csv: 229 expenses", "year to date (Jan-Sep 2026)", "(agg)"} {
			if !strings.Contains(r.Stdout.Tail, want) {
				t.Errorf("stdout lacks %q", want)
			}
		}
		if strings.Contains(r.Stderr.Tail, "findfont") {
			t.Errorf("matplotlib is missing fonts:\n%s", r.Stderr.Tail)
		}
	})

	t.Run("sqlite to diagram", func(t *testing.T) {
		r := e.run(t, jobs.Submission{Script: example(t, "schema_diagram.py"), Inputs: []jobs.File{example(t, "shop.db")}})
		out := outputs(t, r, "schema.dot", "schema.pdf")
		if pdf := out["schema.pdf"]; !bytes.HasPrefix(pdf, []byte("%PDF-")) {
			t.Errorf("schema.pdf is not a PDF: starts %q", pdf[:min(len(pdf), 8)])
		}
		if src := string(out["schema.dot"]); !strings.HasPrefix(src, "digraph schema {") || !strings.Contains(src, "order_items:out_order_id:e -> orders:in_id:w") {
			t.Errorf("schema.dot:\n%s", src)
		}
		for _, want := range []string{"shop.db: SQLite 3.", "7 tables", "category_id -> categories(id)", "parent_id -> categories(id)", "foreign key check: 0 violations"} {
			if !strings.Contains(r.Stdout.Tail, want) {
				t.Errorf("stdout lacks %q", want)
			}
		}
		if r.Stderr.Tail != "" {
			t.Errorf("stderr: %s", r.Stderr.Tail)
		}
	})

	t.Run("node csv to json", func(t *testing.T) {
		r := e.run(t, jobs.Submission{
			Script: example(t, "csv_report.js"), Inputs: []jobs.File{example(t, "sales.csv")},
			Env: map[string]string{"GROUP_BY": "region", "VALUE": "units*unit_price"},
		})
		out := outputs(t, r, "report.json")
		var report struct {
			Source  string `json:"source"`
			Rows    int    `json:"rows"`
			Columns map[string]struct {
				Type string `json:"type"`
			} `json:"columns"`
			Grouping struct {
				By     []string         `json:"by"`
				Total  float64          `json:"total"`
				Groups []map[string]any `json:"groups"`
			} `json:"grouping"`
		}
		if err := json.Unmarshal(out["report.json"], &report); err != nil {
			t.Fatalf("report.json: %v\n%s", err, out["report.json"])
		}
		types := map[string]string{}
		for name, c := range report.Columns {
			types[name] = c.Type
		}
		wantTypes := map[string]string{"date": "date", "region": "text", "product": "text", "units": "number", "unit_price": "number"}
		if report.Source != "sales.csv" || report.Rows != 288 || len(types) != len(wantTypes) {
			t.Errorf("report: source %q rows %d columns %v", report.Source, report.Rows, types)
		}
		for name, typ := range wantTypes {
			if types[name] != typ {
				t.Errorf("column %s: type %q, want %q", name, types[name], typ)
			}
		}
		// The same total as sales_summary.py prints.
		if report.Grouping.Total != 149473 || len(report.Grouping.Groups) != 4 || report.Grouping.Groups[0]["region"] == nil {
			t.Errorf("grouping %+v", report.Grouping)
		}
	})

	t.Run("npm install through the proxy", func(t *testing.T) {
		r := e.run(t, jobs.Submission{Script: file(t, "npm.sh", `set -e
cd /work
npm install --no-audit --no-fund is-number
node -e 'console.log("is-number(42):", require("is-number")(42))'
`), Network: []string{"npm"}})
		if !strings.Contains(r.Stdout.Tail, "is-number(42): true") {
			t.Errorf("stdout: %s", r.Stdout.Tail)
		}
		if r.Egress == nil || r.Egress.Allowed == 0 || r.Egress.Refused != 0 {
			t.Errorf("egress %+v", r.Egress)
		}
	})
}
