package worker

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hostPython runs the sitecustomize under test: Debian's Python, which
// scripts/install-deps.sh installs, as the images have it.
const hostPython = "/usr/bin/python3"

// runPythonSite runs script under hostPython with the job's sitecustomize
// first on its path, its stdout a pipe nobody reads for the first delay.
// It returns what came out of the pipe, stderr, and how the run ended.
func runPythonSite(t *testing.T, script string, delay time.Duration) (string, string, error) {
	t.Helper()
	if _, err := os.Stat(hostPython); err != nil {
		t.Fatalf("%s: %v (make deps installs Debian's python3)", hostPython, err)
	}
	dir := t.TempDir()
	if err := writePythonSite(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "job.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hostPython, path)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONPATH=" + filepath.Join(dir, pythonSiteDir)}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	out := make(chan []byte)
	go func() {
		time.Sleep(delay)
		b, _ := io.ReadAll(r)
		r.Close()
		out <- b
	}()
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("the script hung:\n%s", script)
	}
	return string(<-out), stderr.String(), err
}

// The job's own last write to a full pipe holds stdout's lock while the
// flush thread waits for it; when the pipe drains, the thread takes the
// lock and then waits for the interpreter, which by then is exiting. The
// exit must not abort ("Fatal Python error: _enter_buffered_busy", exit
// 134, as two jobs in CI did): the flushing stops at exit, after its last
// flush. Without that this run aborted 8 times in 10 here.
func TestPythonSiteExitsWhileTheFlushWaits(t *testing.T) {
	const script = `import fcntl, os
os.write(1, b"y" * fcntl.fcntl(1, 1032))  # F_GETPIPE_SZ: the pipe is full
print("last")  # flushed by the interpreter as the script ends: it waits
`
	for i := 0; i < 5; i++ {
		out, stderr, err := runPythonSite(t, script, 300*time.Millisecond)
		ys, ok := strings.CutSuffix(out, "last\n")
		if err != nil || !ok || len(ys) < 4096 || strings.Trim(ys, "y") != "" {
			t.Fatalf("run %d: %v, %d bytes ending %q\nstderr: %s", i, err, len(out), out[max(0, len(out)-10):], stderr)
		}
	}
}

// A fork after the flushing stopped (from an exit handler run before the
// end) goes on, and so do both processes' output.
func TestPythonSiteForksAfterTheFlushingStopped(t *testing.T) {
	const script = `import atexit, os, sys
print("before")
atexit._run_exitfuncs()  # the sitecustomize's exit handler: flushing stops
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    print("child")
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
print("parent")
`
	out, stderr, err := runPythonSite(t, script, 0)
	if err != nil || out != "before\nchild\nparent\n" {
		t.Fatalf("%v: stdout %q, stderr %s", err, out, stderr)
	}
}
