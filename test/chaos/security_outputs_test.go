package chaos

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
)

// resultBytes is the size of a result's JSON.
func resultBytes(t *testing.T, r *jobs.Result) int {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// checkSkippedShown fails the test for a skipped path shown raw (control
// characters) or whole past the 1024-byte cap, or a list over its cap.
func checkSkippedShown(t *testing.T, r *jobs.Result) {
	t.Helper()
	if len(r.SkippedOutputs) > executor.MaxSkippedListed {
		t.Errorf("%d skipped entries listed, cap %d", len(r.SkippedOutputs), executor.MaxSkippedListed)
	}
	for _, s := range r.SkippedOutputs {
		if strings.ContainsFunc(s.Path, unicode.IsControl) || len(s.Path) > executor.MaxOutputPathBytes+len("…") {
			t.Errorf("skipped path %.60q (%d bytes) shown raw or whole", s.Path, len(s.Path))
			return
		}
	}
}

// securityOutputHostiles are jobs that attack the result document and the
// links to their outputs (issue 13, items 4, 5 and 8): each must end in
// its status on its first attempt (TestHostileJobs checks the attempt)
// with a bounded result.
func securityOutputHostiles() []hostile {
	entries := 2000
	if env.full {
		entries = 10000
	}
	return []hostile{
		{
			name: fmt.Sprintf("%d control-character names, deep dirs of them, symlinks at the bottom", entries),
			sub: jobs.Submission{Script: script("ctlnames.py", `import os, sys
out, n = os.environ["OUTPUT_DIR"], int(sys.argv[1])
made = 0
try:
    # Chains of 255-byte control-character directories, 20 deep (over
    # PATH_MAX), with symlinks of control-character names at the bottom.
    for c in range(n // 100):
        os.chdir(out)
        for d in range(20):
            name = "%02d%03d" % (d, c) + "\x1b[2J\x07" * 50
            os.mkdir(name)
            os.chdir(name)
            made += 1
        for i in range(30):
            os.symlink("/etc/passwd", "%02d" % i + "\r\n\x1b]0;x\x07" * 30)
            made += 1
    # The rest: files of control-character names.
    i = 0
    while True:
        open(os.path.join(out, "%06d" % i + "\x1b" * 249), "w").close()
        i += 1
        made += 1
except OSError as e:
    print("stopped:", e.strerror)
print("made", made)
`), Args: []string{strconv.Itoa(entries)}, Limits: jobs.LimitRequest{TimeoutSeconds: 300, MemoryBytes: 256 << 20, OutputFiles: entries}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				size := resultBytes(t, r)
				checkSkippedShown(t, r)
				if len(r.Outputs) != 0 || len(r.SkippedOutputs) != executor.MaxSkippedListed || r.SkippedOutputsOmitted == 0 || size > 256<<10 {
					t.Errorf("%d outputs, %d skipped listed, %d omitted, result %s", len(r.Outputs), len(r.SkippedOutputs), r.SkippedOutputsOmitted, human(int64(size)))
				}
				return fmt.Sprintf("%s; nothing collected, %d skipped listed + %d counted, result %s",
					strings.TrimSpace(tail(r.Stdout)), len(r.SkippedOutputs), r.SkippedOutputsOmitted, human(int64(size)))
			},
			disk: 64 << 20,
		},
		{
			name: "a path over PATH_MAX and a name over the object key limit",
			sub: jobs.Submission{Script: script("longpaths.py", `import os
out = os.environ["OUTPUT_DIR"]
open(os.path.join(out, "ok.txt"), "w").write("ok")
long = os.path.join(out, "k" * 249, "e" * 249, "y" * 249)
os.makedirs(long)
open(os.path.join(long, "z" * 250), "w").write("long key")
os.chdir(out)
for d in range(40):
    os.mkdir("%02d" % d + "d" * 253)
    os.chdir("%02d" % d + "d" * 253)
open("bottom.txt", "w").write("deep")
os.symlink("/etc/passwd", "link")
print("depth", len(os.getcwd()))
`), Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				checkSkippedShown(t, r)
				var reasons []string
				for _, s := range r.SkippedOutputs {
					reasons = append(reasons, s.Type+": "+s.Reason)
				}
				if len(r.Outputs) != 1 || r.Outputs[0].Path != "ok.txt" || len(r.SkippedOutputs) != 2 {
					t.Errorf("outputs %d, skipped %q", len(r.Outputs), reasons)
				}
				return fmt.Sprintf("%s; ok.txt uploaded; skipped: %s", strings.TrimSpace(tail(r.Stdout)), strings.Join(reasons, "; "))
			},
			disk: 64 << 20,
		},
		{
			name: fmt.Sprintf("%d symlinks: a huge skipped list", entries),
			sub: jobs.Submission{Script: script("links.py", `import os, sys
out = os.environ["OUTPUT_DIR"]
for i in range(int(sys.argv[1])):
    os.symlink("/etc/passwd", os.path.join(out, "%05d-" % i + "l" * 240))
`), Args: []string{strconv.Itoa(entries - 1)}, Limits: jobs.LimitRequest{TimeoutSeconds: 300, MemoryBytes: 256 << 20, OutputFiles: entries}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				size := resultBytes(t, r)
				checkSkippedShown(t, r)
				if len(r.SkippedOutputs)+r.SkippedOutputsOmitted != entries-1 || size > 128<<10 {
					t.Errorf("%d listed + %d omitted of %d links; result %s", len(r.SkippedOutputs), r.SkippedOutputsOmitted, entries-1, human(int64(size)))
				}
				return fmt.Sprintf("%d listed + %d counted; result %s", len(r.SkippedOutputs), r.SkippedOutputsOmitted, human(int64(size)))
			},
			disk: 64 << 20,
		},
		{
			name: fmt.Sprintf("%d outputs of long names: a result over the cap", entries),
			sub: jobs.Submission{Script: script("manyout.py", `import os, sys
out = os.environ["OUTPUT_DIR"]
for i in range(int(sys.argv[1])):
    open(os.path.join(out, "%05d-" % i + "n" * 200), "w").write(str(i))
`), Args: []string{strconv.Itoa(entries - 1)}, Limits: jobs.LimitRequest{TimeoutSeconds: 600, MemoryBytes: 256 << 20, OutputFiles: entries}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				size := resultBytes(t, r)
				tr := r.Trimmed
				if size > jobs.DefaultMaxResultBytes || tr == nil || tr.Manifest == nil || len(r.Outputs)+tr.Outputs != entries-1 {
					t.Fatalf("result %s, %d outputs listed, trimmed %+v", human(int64(size)), len(r.Outputs), tr)
				}
				var m jobs.Manifest
				if err := json.Unmarshal(download(t, tr.Manifest.URL), &m); err != nil || len(m.Outputs) != entries-1 {
					t.Fatalf("manifest: %d outputs (%v)", len(m.Outputs), err)
				}
				last := m.Outputs[len(m.Outputs)-1]
				if got := string(download(t, last.URL)); got != strconv.Itoa(entries-2) {
					t.Errorf("last output through the manifest: %q", got)
				}
				return fmt.Sprintf("result %s (cap %s): %d outputs listed, %d cut, all %d in the manifest", human(int64(size)),
					human(jobs.DefaultMaxResultBytes), len(r.Outputs), tr.Outputs, len(m.Outputs))
			},
			disk: 64 << 20,
		},
		{
			name: "HTML, SVG and JavaScript outputs (stored XSS)",
			sub: jobs.Submission{Script: script("xss.py", `import os
out = os.environ["OUTPUT_DIR"]
page = "<html><script>fetch('/sandq/?list-type=2').then(r => r.text()).then(alert)</script></html>"
for name in ["x.html", "x.xhtml", "x.js", "x.xml", "noext"]:
    open(os.path.join(out, name), "w").write(page)
open(os.path.join(out, "x.svg"), "w").write('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
print(page)
`), Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				var served []string
				links := map[string]string{"stdout.log": r.Stdout.URL}
				for _, o := range r.Outputs {
					links[o.Path] = o.URL
				}
				for name, u := range links {
					resp, err := http.Get(u)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					ct, cd := resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition")
					mt, _, _ := mime.ParseMediaType(ct)
					if !strings.HasPrefix(cd, "attachment;") || mt == "text/html" || strings.Contains(mt, "xml") || strings.Contains(mt, "javascript") {
						t.Errorf("%s served as %q, %q", name, ct, cd)
					}
					served = append(served, name+"="+mt)
				}
				return "every link a download, none labelled active: " + strings.Join(served, " ")
			},
			disk: 64 << 20,
		},
	}
}
