package executor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// sleeperProcess starts a host process that stands for a sandbox's.
func sleeperProcess(t *testing.T, d string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", d)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func appendLog(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func noResult(t *testing.T, w *exitWatch, what string) {
	t.Helper()
	select {
	case r := <-w.Result():
		t.Fatalf("%s: result %+v, want none yet", what, r)
	case <-time.After(150 * time.Millisecond):
	}
}

func result(t *testing.T, w *exitWatch) waitResult {
	t.Helper()
	select {
	case r := <-w.Result():
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no result after 10s")
		return waitResult{}
	}
}

// The watch reports the status the moment the log's own line states it,
// and nothing before: not for other lines, not for the job's arguments
// quoted in the log, not for half a line.
func TestExitWatchReadsTheStatusLine(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "runsc.log.20261126-011551.253247.boot.txt")
	appendLog(t, log, "I1126 01:15:51.4       1 loader.go:1] starting\n")
	p := sleeperProcess(t, "30")
	w, err := watchExit(dir, p.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	noResult(t, w, "a running sandbox")
	appendLog(t, log, `I1126 01:15:51.5       1 kernel.go:1312] EXEC: []string{"/bin/sh", "application exiting with exit status 0"}`+"\n")
	noResult(t, w, "the job's arguments")
	appendLog(t, log, "I1126 01:15:51.6       1 boot.go:779] application exiting with exit st")
	noResult(t, w, "half a line")
	appendLog(t, log, "atus 3\n")
	if r := result(t, w); r.err != nil || r.status != 3 {
		t.Fatalf("result %+v, want status 3", r)
	}
	w.Close() // after the result: harmless
}

// A sandbox process that ends without the line reports errNoExitStatus; one
// already gone reports what its log says.
func TestExitWatchProcessEnds(t *testing.T) {
	dir := t.TempDir()
	p := sleeperProcess(t, "0.2")
	w, err := watchExit(dir, p.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if r := result(t, w); !errors.Is(r.err, errNoExitStatus) {
		t.Fatalf("result %+v, want errNoExitStatus", r)
	}

	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	appendLog(t, filepath.Join(dir, "x.boot.txt"), "I1126 01:15:53.6 1 boot.go:779] application exiting with killed by signal 9\n")
	w, err = watchExit(dir, gone.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if r := result(t, w); r.err != nil || r.status != 137 {
		t.Fatalf("result %+v, want 137", r)
	}
}

// Close ends a watch that has no result.
func TestExitWatchClose(t *testing.T) {
	dir := t.TempDir()
	p := sleeperProcess(t, "30")
	w, err := watchExit(dir, p.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	noResult(t, w, "a closed watch")
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		closed := w.closed
		w.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch did not close its descriptors")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Close()
}

func TestWatchExitRefusesAMissingDirectory(t *testing.T) {
	if _, err := watchExit(filepath.Join(t.TempDir(), "missing"), os.Getpid()); err == nil {
		t.Fatal("watching a missing directory worked")
	}
}
