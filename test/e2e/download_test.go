package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// downloadScript writes outputs whose bytes the test knows: a text line, a
// nested file of numbers and bytes no text tool would keep (NUL, 0xff, a
// lone CR).
const downloadScript = `set -e
echo "hello from the sandbox" > /mnt/outputs/hello.txt
mkdir -p /mnt/outputs/tables/2026
seq 1 50000 > /mnt/outputs/tables/2026/numbers.csv
printf 'a\000b\377c\rd' > /mnt/outputs/raw.bin
echo "three files written"
echo "a warning" >&2
`

func wantDownloadOutputs() map[string][]byte {
	var numbers bytes.Buffer
	for i := 1; i <= 50000; i++ {
		numbers.WriteString(strconv.Itoa(i) + "\n")
	}
	return map[string][]byte{
		"hello.txt":               []byte("hello from the sandbox\n"),
		"tables/2026/numbers.csv": numbers.Bytes(),
		"raw.bin":                 []byte("a\x00b\xffc\rd"),
	}
}

// filesUnder lists every entry under dir, "/"-separated, directories with a
// trailing "/".
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		got = append(got, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	return got
}

func TestCLIDownloadWritesTheJobsFiles(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "write.sh")
	os.WriteFile(script, []byte(downloadScript), 0o644)
	out := filepath.Join(dir, "out")
	stdout, stderr, code := sandq(t, "enqueue", script, "--wait", "--download", out+"/")
	if code != 0 {
		t.Fatalf("enqueue --wait --download: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	want := wantDownloadOutputs()
	for name, content := range want {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || !bytes.Equal(b, content) {
			t.Errorf("%s: %d bytes (%v), want the script's %d bytes", name, len(b), err, len(content))
		}
		line := "wrote " + filepath.Join(out, name) + "  " + strconv.Itoa(len(content)) + " bytes"
		if !strings.Contains(stdout, line) {
			t.Errorf("stdout does not say %q:\n%s", line, stdout)
		}
	}
	if got := strings.Join(filesUnder(t, out), " "); got != "hello.txt raw.bin tables/ tables/2026/ tables/2026/numbers.csv" {
		t.Errorf("out holds %s", got)
	}
	if !strings.Contains(stdout, "3 files (") || !strings.Contains(stdout, "each checked against the result") {
		t.Errorf("no summary in:\n%s", stdout)
	}
	// stderr starts "job ID queued on QUEUE".
	id := strings.Fields(stderr)[1]

	// sandq download, filtered, with the logs, as JSON.
	out2 := filepath.Join(dir, "out2")
	stdout, stderr, code = sandq(t, "download", id, out2, "--include", "*.csv", "--include", "hello.txt", "--logs", "--json")
	if code != 0 {
		t.Fatalf("download --include --logs --json: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var list []jobs.Downloaded
	if err := json.Unmarshal([]byte(stdout), &list); err != nil {
		t.Fatalf("--json printed %q: %v", stdout, err)
	}
	var paths []string
	for _, d := range list {
		paths = append(paths, d.Kind+":"+d.Path)
		if d.Kind == "output" {
			s := sha256.Sum256(want[d.Path])
			if d.SHA256 != hex.EncodeToString(s[:]) || d.Size != int64(len(want[d.Path])) || d.File != filepath.Join(out2, d.Path) {
				t.Errorf("listed %+v", d)
			}
		}
	}
	if got := strings.Join(paths, " "); got != "output:hello.txt output:tables/2026/numbers.csv stdout:stdout.log stderr:stderr.log" {
		t.Errorf("--json listed %s", got)
	}
	if got := strings.Join(filesUnder(t, out2), " "); got != "hello.txt stderr.log stdout.log tables/ tables/2026/ tables/2026/numbers.csv" {
		t.Errorf("--include '*.csv' --include hello.txt --logs wrote %s", got)
	}
	for name, content := range map[string]string{"stdout.log": "three files written\n", "stderr.log": "a warning\n"} {
		if b, _ := os.ReadFile(filepath.Join(out2, name)); string(b) != content {
			t.Errorf("%s holds %q, want %q", name, b, content)
		}
	}
}

// TestCLIDownloadThroughTheServer downloads through --server only (Redis
// unreachable): a job that failed has what it wrote downloaded, and the
// exit status stays the job's; wait --json keeps stdout to the document.
func TestCLIDownloadThroughTheServer(t *testing.T) {
	url, tok := apiServer(t)
	server := []string{"--server", url, "--token", tok, "--redis-addr", "127.0.0.1:1"}
	dir := t.TempDir()
	script := filepath.Join(dir, "fail.sh")
	os.WriteFile(script, []byte(downloadScript+"exit 3\n"), 0o644)
	out := filepath.Join(dir, "out")
	stdout, stderr, code := sandq(t, append([]string{"enqueue", script, "--wait", "--download", out}, server...)...)
	if code != 1 || !strings.Contains(stdout, "status   failed") {
		t.Fatalf("enqueue --wait --download of a failing job: exit %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for name, content := range wantDownloadOutputs() {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || !bytes.Equal(b, content) {
			t.Errorf("%s: %d bytes (%v), want the script's %d bytes", name, len(b), err, len(content))
		}
	}
	id := strings.Fields(stderr)[1]
	out2 := filepath.Join(dir, "out2")
	stdout, stderr, code = sandq(t, append([]string{"wait", id, "--json", "--download", out2}, server...)...)
	var r jobs.Result
	if err := json.Unmarshal([]byte(stdout), &r); err != nil || code != 1 || r.ID != id {
		t.Fatalf("wait --json --download: exit %d, stdout %q (%v)", code, stdout, err)
	}
	if !strings.Contains(stderr, "wrote "+filepath.Join(out2, "raw.bin")) {
		t.Errorf("wait --json --download: stderr does not say what was written:\n%s", stderr)
	}
	if got := strings.Join(filesUnder(t, out2), " "); got != "hello.txt raw.bin tables/ tables/2026/ tables/2026/numbers.csv" {
		t.Errorf("out2 holds %s", got)
	}
}

// TestCLIDownloadOfAJobNotFinished is refused, naming the state, and
// writes nothing.
func TestCLIDownloadOfAJobNotFinished(t *testing.T) {
	enq, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "sleep.sh", "sleep 60\n")})
	if err != nil {
		t.Fatal(err)
	}
	defer env.client.Cancel(context.Background(), enq.ID)
	out := filepath.Join(t.TempDir(), "out")
	_, stderr, code := sandq(t, "download", enq.ID, out)
	if code != 2 || !strings.Contains(stderr, "is not finished") || !strings.Contains(stderr, "sandq wait "+enq.ID+" --download") {
		t.Errorf("download of a running job: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("%s was made: %v", out, err)
	}
	_, stderr, code = sandq(t, "enqueue", "../../examples/sales_summary.py", "--download", out)
	if code != 2 || !strings.Contains(stderr, "--download needs --wait") {
		t.Errorf("--download without --wait: exit %d: %s", code, stderr)
	}
}

// TestCLIDownloadRefusesATamperedObject overwrites one output in the store
// after the job ended: the download fails naming it, and leaves nothing of
// it, not even a temporary file.
func TestCLIDownloadRefusesATamperedObject(t *testing.T) {
	dir := t.TempDir()
	r := runJob(t, jobs.Submission{Script: file(t, "write.sh", downloadScript)})
	wantStatus(t, r, jobs.StatusSucceeded)
	var key string
	for _, o := range r.Outputs {
		if o.Path == "tables/2026/numbers.csv" {
			key = o.Key
		}
	}
	if key == "" {
		t.Fatalf("no numbers.csv in %+v", r.Outputs)
	}
	// Same length, other bytes: only the sha256 tells.
	tampered := bytes.Repeat([]byte("x"), len(wantDownloadOutputs()["tables/2026/numbers.csv"]))
	if _, err := env.store.Put(context.Background(), key, bytes.NewReader(tampered), int64(len(tampered)), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	stdout, stderr, code := sandq(t, "download", r.ID, out)
	if code != 2 || !strings.Contains(stderr, `"tables/2026/numbers.csv"`) || !strings.Contains(stderr, "sha256") || !strings.Contains(stderr, "does not match the result") {
		t.Fatalf("download of a tampered object: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	// The outputs before it in the result are whole; of numbers.csv there
	// is nothing, and no temporary file anywhere.
	for _, f := range filesUnder(t, out) {
		if strings.Contains(f, "numbers") || strings.Contains(f, ".sandq-download-") {
			t.Errorf("left %s", f)
		}
	}
	if b, err := os.ReadFile(filepath.Join(out, "hello.txt")); err != nil || string(b) != "hello from the sandbox\n" {
		t.Errorf("hello.txt: %q %v", b, err)
	}
	if !strings.Contains(stdout, "before the error") {
		t.Errorf("stdout does not say what was written before the error:\n%s", stdout)
	}
}

// TestCLIDownloadTheBudgetReport is the README's day-to-day line: the
// spreadsheet example through the CLI leaves its PNG and XLSX in out/.
func TestCLIDownloadTheBudgetReport(t *testing.T) {
	e := startExamplesWorker(t)
	out := filepath.Join(t.TempDir(), "out")
	stdout, stderr, code := sandq(t, "enqueue", "../../examples/budget_report.py", "--input", "../../examples/budget.xlsx", "--input", "../../examples/actuals.csv",
		"--queue", e.queue, "--timeout", "4m", "--wait", "--download", out+"/")
	t.Logf("stdout:\n%s", stdout)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if got := strings.Join(filesUnder(t, out), " "); got != "budget_summary.xlsx budget_vs_actual.png" {
		t.Fatalf("out holds %s", got)
	}
	png, _ := os.ReadFile(filepath.Join(out, "budget_vs_actual.png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("budget_vs_actual.png is not a PNG: starts %q", png[:min(len(png), 8)])
	}
	xlsx, _ := os.ReadFile(filepath.Join(out, "budget_summary.xlsx"))
	wantXLSX(t, "budget_summary.xlsx", xlsx, "xl/worksheets/sheet1.xml", "xl/charts/chart1.xml")
}
