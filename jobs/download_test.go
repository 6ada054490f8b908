package jobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// objectServer serves files by name over HTTP, standing in for the store's
// presigned links, and counts the requests it gets.
type objectServer struct {
	*httptest.Server
	files    map[string][]byte
	requests atomic.Int64
}

func newObjectServer(t *testing.T, files map[string][]byte) *objectServer {
	t.Helper()
	s := &objectServer{files: files}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		b, ok := s.files[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// output is a result entry for a file served by s under key, described as
// content (its length and sha256).
func (s *objectServer) output(p, key string, content []byte) OutputDoc {
	return OutputDoc{Path: p, Size: int64(len(content)), SHA256: sum(content), URL: s.URL + "/" + key, ExpiresAt: time.Now().Add(time.Hour)}
}

// listDir lists every entry under dir, "/"-separated, directories with a
// trailing "/".
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var got []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		got = append(got, filepath.ToSlash(rel))
		return nil
	})
	sort.Strings(got)
	return got
}

func TestDownloadWritesCheckedFilesNestedAndLogs(t *testing.T) {
	chart, table := bytes.Repeat([]byte("png"), 50000), []byte("month,total\n")
	stdout := []byte("read 12 rows\n")
	s := newObjectServer(t, map[string][]byte{"chart": chart, "table": table, "out": stdout, "err": nil})
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("chart.png", "chart", chart), s.output("tables/2026/summary.csv", "table", table)},
		Stdout: &LogDoc{Bytes: int64(len(stdout)), URL: s.URL + "/out", ExpiresAt: time.Now().Add(time.Hour)},
		Stderr: &LogDoc{Bytes: 0, URL: s.URL + "/err", ExpiresAt: time.Now().Add(time.Hour)}}
	dir := filepath.Join(t.TempDir(), "new", "out")
	var written []string
	got, err := Download(context.Background(), nil, res, dir, DownloadOptions{Logs: true, Written: func(d Downloaded) { written = append(written, d.Path) }})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"chart.png", "stderr.log", "stdout.log", "tables/", "tables/2026/", "tables/2026/summary.csv"}
	if l := listDir(t, dir); strings.Join(l, " ") != strings.Join(want, " ") {
		t.Errorf("dir holds %q, want %q", l, want)
	}
	for name, content := range map[string][]byte{"chart.png": chart, "tables/2026/summary.csv": table, "stdout.log": stdout, "stderr.log": nil} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(b, content) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(b), err, len(content))
		}
	}
	if len(got) != 4 || got[0].Path != "chart.png" || got[0].Size != int64(len(chart)) || got[0].SHA256 != sum(chart) || got[0].Kind != "output" ||
		got[0].File != filepath.Join(dir, "chart.png") || got[2].Kind != "stdout" || got[2].SHA256 != "" {
		t.Errorf("Download returned %+v", got)
	}
	if strings.Join(written, " ") != "chart.png tables/2026/summary.csv stdout.log stderr.log" {
		t.Errorf("Written called for %q", written)
	}
}

func TestDownloadRefusesUnsafeNamesBeforeFetchingAnything(t *testing.T) {
	content := []byte("x")
	for _, tc := range []struct {
		name  string
		paths []string
	}{
		{"absolute", []string{"ok.txt", "/tmp/evil"}},
		{"dot-dot", []string{"../evil"}},
		{"dot-dot inside", []string{"a/../../evil"}},
		{"dot-dot at end", []string{"a/.."}},
		{"dot", []string{"."}},
		{"dot component", []string{"./a"}},
		{"double slash", []string{"a//b"}},
		{"trailing slash", []string{"a/"}},
		{"empty", []string{""}},
		{"NUL", []string{"a\x00b"}},
		{"escape sequence", []string{"a\x1b[2Jb"}},
		{"not UTF-8", []string{"a\xffb"}},
		{"over the path cap", []string{strings.Repeat("a", 1025)}},
		{"listed twice", []string{"a.txt", "a.txt"}},
		{"file and directory", []string{"a", "a/b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newObjectServer(t, map[string][]byte{"k": content})
			res := &Result{ID: "j1"}
			for _, p := range tc.paths {
				res.Outputs = append(res.Outputs, s.output(p, "k", content))
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "out")
			got, err := Download(context.Background(), nil, res, dir, DownloadOptions{})
			if !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("err %v, want ErrUnsafePath", err)
			}
			if len(got) != 0 || s.requests.Load() != 0 {
				t.Errorf("wrote %v, made %d requests", got, s.requests.Load())
			}
			if l := listDir(t, parent); len(l) != 0 {
				t.Errorf("left %q", l)
			}
		})
	}
}

func TestDownloadRefusesSymlinkInTheDirectory(t *testing.T) {
	content := []byte("written through a link")
	s := newObjectServer(t, map[string][]byte{"k": content})
	dir, elsewhere := t.TempDir(), t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("sub/x.txt", "k", content)}}
	_, err := Download(context.Background(), nil, res, dir, DownloadOptions{})
	if !errors.Is(err, ErrUnsafePath) || !strings.Contains(err.Error(), `"sub" is a symbolic link`) {
		t.Fatalf("err %v, want ErrUnsafePath naming sub", err)
	}
	if l := listDir(t, elsewhere); len(l) != 0 {
		t.Errorf("the link's target holds %q", l)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "sub" {
		t.Errorf("dir holds %q", l)
	}
}

func TestDownloadReplacesALinkByTheFileNameWithoutFollowingIt(t *testing.T) {
	content := []byte("new")
	s := newObjectServer(t, map[string][]byte{"k": content})
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(target, []byte("keep"), 0o644)
	if err := os.Symlink(target, filepath.Join(dir, "x.txt")); err != nil {
		t.Fatal(err)
	}
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("x.txt", "k", content)}}
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("the link's target now holds %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, "x.txt"))
	if b, _ := os.ReadFile(filepath.Join(dir, "x.txt")); err != nil || !fi.Mode().IsRegular() || string(b) != "new" {
		t.Errorf("x.txt: %v %v %q", fi, err, b)
	}
}

func TestDownloadChecksumMismatchLeavesNothing(t *testing.T) {
	good, tampered := []byte("the job's bytes"), []byte("other bytes!!!!")
	s := newObjectServer(t, map[string][]byte{"a": good, "b": tampered, "c": []byte("short")})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("an older download"), 0o644)
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("a.txt", "a", good), s.output("b.txt", "b", good), s.output("c.txt", "c", good)}}
	got, err := Download(context.Background(), nil, res, dir, DownloadOptions{})
	if !errors.Is(err, ErrChecksumMismatch) || !strings.Contains(err.Error(), `"b.txt"`) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("err %v, want a sha256 mismatch naming b.txt", err)
	}
	if len(got) != 1 || got[0].Path != "a.txt" {
		t.Errorf("returned %+v, want a.txt only", got)
	}
	// b.txt keeps what was there before; no temporary file is left; c.txt
	// was never started.
	if l := listDir(t, dir); strings.Join(l, " ") != "a.txt b.txt" {
		t.Errorf("dir holds %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b.txt")); string(b) != "an older download" {
		t.Errorf("b.txt holds %q", b)
	}

	// A body of the wrong length is refused as well.
	res.Outputs = res.Outputs[2:]
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{}); !errors.Is(err, ErrChecksumMismatch) || !strings.Contains(err.Error(), "5 bytes received") {
		t.Fatalf("short body: %v", err)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "a.txt b.txt" {
		t.Errorf("dir holds %q", l)
	}
}

func TestDownloadDroppedConnectionLeavesNothing(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789"), 100000)
	sent := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Half the body, then the connection is gone.
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
		w.Write(content[:len(content)/2])
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		close(sent)
	}))
	defer srv.Close()
	dir := t.TempDir()
	res := &Result{ID: "j1", Outputs: []OutputDoc{{Path: "deep/big.bin", Size: int64(len(content)), SHA256: sum(content), URL: srv.URL + "/big"}}}
	_, err := Download(context.Background(), nil, res, dir, DownloadOptions{})
	<-sent
	t.Logf("dropped connection: %v", err)
	if err == nil || !strings.Contains(err.Error(), `"deep/big.bin"`) {
		t.Fatalf("err %v, want a failed transfer naming deep/big.bin", err)
	}
	// The directory made for it may stay; no file, whole or partial.
	if l := listDir(t, dir); strings.Join(l, " ") != "deep/" {
		t.Errorf("dir holds %q", l)
	}
}

// A body that stops sending is given up after the idle timeout (lowered
// here from a minute to 300 ms), naming the file; one that goes on slowly,
// a byte every 100 ms, is not.
func TestDownloadIdleBodyIsGivenUp(t *testing.T) {
	defer func(d time.Duration) { downloadIdle = d }(downloadIdle)
	downloadIdle = 300 * time.Millisecond
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "6")
		for i := range 6 {
			if r.URL.Path == "/stalls" && i == 3 {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return
			}
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer srv.Close()
	six := []byte("xxxxxx")
	res := &Result{ID: "j1", Outputs: []OutputDoc{{Path: "slow.txt", Size: 6, SHA256: sum(six), URL: srv.URL + "/slow"}}}
	dir := t.TempDir()
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{}); err != nil {
		t.Fatalf("a slow body: %v", err)
	}
	res.Outputs[0] = OutputDoc{Path: "stalled.txt", Size: 6, SHA256: sum(six), URL: srv.URL + "/stalls"}
	_, err := Download(context.Background(), nil, res, dir, DownloadOptions{})
	if err == nil || !strings.Contains(err.Error(), `"stalled.txt"`) || !strings.Contains(err.Error(), "nothing received for 300ms") {
		t.Fatalf("a stalled body: %v, want it given up naming the file and the timeout", err)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "slow.txt" {
		t.Errorf("dir holds %q", l)
	}
}

func TestDownloadExpiredLinks(t *testing.T) {
	content := []byte("x")
	s := newObjectServer(t, map[string][]byte{"k": content})
	o := s.output("a.txt", "k", content)
	o.ExpiresAt = time.Now().Add(-time.Minute)
	dir := t.TempDir()
	_, err := Download(context.Background(), nil, &Result{ID: "j1", Outputs: []OutputDoc{o}}, dir, DownloadOptions{})
	if !errors.Is(err, ErrLinksExpired) || !strings.Contains(err.Error(), "sandq status") || s.requests.Load() != 0 {
		t.Fatalf("err %v after %d requests, want ErrLinksExpired before any", err, s.requests.Load())
	}
	// The store's own refusal of an expired link (a clock behind the
	// store's) says the same.
	expired := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>`))
	}))
	defer expired.Close()
	o.URL, o.ExpiresAt = expired.URL+"/k", time.Now().Add(time.Hour)
	_, err = Download(context.Background(), nil, &Result{ID: "j1", Outputs: []OutputDoc{o}}, dir, DownloadOptions{})
	if !errors.Is(err, ErrLinksExpired) {
		t.Fatalf("err %v, want ErrLinksExpired", err)
	}
	if l := listDir(t, dir); len(l) != 0 {
		t.Errorf("dir holds %q", l)
	}
}

func TestDownloadInclude(t *testing.T) {
	png, csv := []byte("png"), []byte("csv")
	s := newObjectServer(t, map[string][]byte{"png": png, "csv": csv})
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("chart.png", "png", png), s.output("plots/b.png", "png", png), s.output("data.csv", "csv", csv)}}
	dir := t.TempDir()
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{Include: []string{"*.png"}}); err != nil {
		t.Fatal(err)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "chart.png plots/ plots/b.png" {
		t.Errorf("*.png wrote %q", l)
	}
	dir = t.TempDir()
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{Include: []string{"plots/*", "data.csv"}}); err != nil {
		t.Fatal(err)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "data.csv plots/ plots/b.png" {
		t.Errorf("plots/* data.csv wrote %q", l)
	}
	if _, err := Download(context.Background(), nil, res, t.TempDir(), DownloadOptions{Include: []string{"*.xlsx"}}); err == nil || !strings.Contains(err.Error(), "no output of job j1 matches") {
		t.Errorf("no match: %v", err)
	}
	if _, err := Download(context.Background(), nil, res, t.TempDir(), DownloadOptions{Include: []string{"[x"}}); err == nil || !strings.Contains(err.Error(), `include "[x"`) {
		t.Errorf("bad glob: %v", err)
	}
}

func TestDownloadLogsClashWithAnOutput(t *testing.T) {
	content := []byte("x")
	s := newObjectServer(t, map[string][]byte{"k": content})
	res := &Result{ID: "j1", Outputs: []OutputDoc{s.output("stdout.log", "k", content)}, Stdout: &LogDoc{Bytes: 1, URL: s.URL + "/k"}}
	_, err := Download(context.Background(), nil, res, t.TempDir(), DownloadOptions{Logs: true})
	if err == nil || !strings.Contains(err.Error(), `output "stdout.log" has the name --logs writes`) || s.requests.Load() != 0 {
		t.Fatalf("err %v", err)
	}
}

func TestDownloadTrimmedResultReadsTheManifest(t *testing.T) {
	a, b := []byte("a"), []byte("bb")
	s := newObjectServer(t, map[string][]byte{"a": a, "b": b})
	m := Manifest{ID: "j1", Outputs: []OutputDoc{s.output("a.txt", "a", a), s.output("b.txt", "b", b)}}
	mb, _ := json.Marshal(m)
	s.files["manifest"] = mb
	res := &Result{ID: "j1", Outputs: m.Outputs[:1], Trimmed: &TrimmedDoc{Outputs: 1, Manifest: &ManifestRef{URL: s.URL + "/manifest", ExpiresAt: time.Now().Add(time.Hour)}}}
	dir := t.TempDir()
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	if l := listDir(t, dir); strings.Join(l, " ") != "a.txt b.txt" {
		t.Errorf("dir holds %q", l)
	}
	// A manifest over the cap is refused without being read whole.
	defer func(n int64) { maxManifestBytes = n }(maxManifestBytes)
	maxManifestBytes = int64(len(mb)) - 1
	want := fmt.Sprintf("%d bytes received, the result says 0 to %d", len(mb), len(mb)-1)
	if _, err := Download(context.Background(), nil, res, t.TempDir(), DownloadOptions{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a manifest over the cap: %v, want %q", err, want)
	}
	maxManifestBytes = int64(len(mb))
	// Another job's manifest is refused.
	m.ID = "j2"
	s.files["manifest"], _ = json.Marshal(m)
	if _, err := Download(context.Background(), nil, res, t.TempDir(), DownloadOptions{}); err == nil || !strings.Contains(err.Error(), `job "j2"'s`) {
		t.Errorf("another job's manifest: %v", err)
	}
}

func TestDownloadLogLengthIsChecked(t *testing.T) {
	whole := bytes.Repeat([]byte("line\n"), 100)
	capped := append(append(bytes.Repeat([]byte("h"), 2000), "\n[sandq: 1000 bytes dropped here]\n"...), bytes.Repeat([]byte("t"), 2000)...)
	s := newObjectServer(t, map[string][]byte{"whole": whole, "capped": capped, "short": whole[:100]})
	link := func(key string, b, dropped int64) *LogDoc {
		return &LogDoc{Bytes: b, DroppedBytes: dropped, URL: s.URL + "/" + key, ExpiresAt: time.Now().Add(time.Hour)}
	}
	dir := t.TempDir()
	// A whole log is its bytes exactly; a capped one is its head and tail
	// with the marker between them.
	res := &Result{ID: "j1", Stdout: link("whole", int64(len(whole)), 0), Stderr: link("capped", 5000, 1000)}
	if _, err := Download(context.Background(), nil, res, dir, DownloadOptions{Logs: true}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "stderr.log")); !bytes.Equal(b, capped) {
		t.Errorf("stderr.log holds %d bytes, want %d", len(b), len(capped))
	}
	for _, doc := range []*LogDoc{link("short", int64(len(whole)), 0), link("short", 5000, 1000)} {
		dir := t.TempDir()
		_, err := Download(context.Background(), nil, &Result{ID: "j1", Stdout: doc}, dir, DownloadOptions{Logs: true})
		if !errors.Is(err, ErrChecksumMismatch) || !strings.Contains(err.Error(), `"stdout.log"`) {
			t.Errorf("a short log (%+v): %v", doc, err)
		}
		if l := listDir(t, dir); len(l) != 0 {
			t.Errorf("left %q", l)
		}
	}
}
