package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

// runCaptured runs the CLI with args, returning its stdout and what it
// wrote to the process's stderr.
func runCaptured(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	r, w, perr := os.Pipe()
	if perr != nil {
		t.Fatal(perr)
	}
	saved := os.Stderr
	os.Stderr = w
	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		read <- b
	}()
	var out bytes.Buffer
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{enqueueCommand()}, Writer: &out, ExitErrHandler: func(*cli.Context, error) {}}
	err = app.Run(permuteArgs(app, append([]string{"sandq"}, args...)))
	os.Stderr = saved
	w.Close()
	return out.String(), string(<-read), err
}

// TestEnqueueQuiet enqueues a script with a 3 MiB input into a real Redis
// and MinIO (stderr is a pipe here, not a terminal). --progress shows the
// upload in plain lines; --quiet prints nothing on stderr, not even the
// note that an idempotency key found the job already queued, which it
// prints without; both at once are refused.
func TestEnqueueQuiet(t *testing.T) {
	stack := testenv.Services(t, testenv.ServicesOptions{AccessKey: "quiet-root", SecretKey: "quiet-root-secret"})
	st, err := storage.New(storage.Config{Endpoint: stack.MinioAddr, AccessKey: "quiet-root", SecretKey: "quiet-root-secret", Bucket: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script, input := filepath.Join(dir, "s.py"), filepath.Join(dir, "big.csv")
	os.WriteFile(script, []byte("print('hi')\n"), 0o644)
	os.WriteFile(input, bytes.Repeat([]byte("1,2,3\n"), 3<<20/6), 0o644)
	global := []string{"--redis-addr", stack.RedisAddr, "--s3-endpoint", stack.MinioAddr, "--s3-access-key", "quiet-root",
		"--s3-secret-key", "quiet-root-secret", "--s3-bucket", "quiet"}
	enqueue := func(flags ...string) (string, string, error) {
		return runCaptured(t, append(append(append([]string{}, global...), "enqueue", script, "--input", input), flags...)...)
	}
	id := regexp.MustCompile(`^[0-9a-zA-Z_-]+\n$`)

	out, errOut, err := enqueue("--progress", "--idempotency-key", "k1")
	if err != nil || !id.MatchString(out) {
		t.Fatalf("enqueue --progress: %v, stdout %q", err, out)
	}
	if !regexp.MustCompile(`^uploaded 3\.0MiB in \d+\.\ds\n$`).MatchString(errOut) {
		t.Errorf("enqueue --progress, stderr not a terminal: stderr %q, want the upload's closing line", errOut)
	}
	again, errOut, err := enqueue("--idempotency-key", "k1")
	if err != nil || again != out || !strings.Contains(errOut, "already exists for idempotency key") {
		t.Fatalf("enqueue again: %v, stdout %q (first %q), stderr %q", err, again, out, errOut)
	}
	again, errOut, err = enqueue("--quiet", "--idempotency-key", "k1")
	if err != nil || again != out || errOut != "" {
		t.Errorf("enqueue --quiet, key known: %v, stdout %q (first %q), stderr %q; want nothing on stderr", err, again, out, errOut)
	}
	other, errOut, err := enqueue("--quiet")
	if err != nil || !id.MatchString(other) || other == out || errOut != "" {
		t.Errorf("enqueue --quiet: %v, stdout %q, stderr %q; want a new job and nothing on stderr", err, other, errOut)
	}
	_, _, err = enqueue("--quiet", "--progress")
	if err == nil || !strings.Contains(err.Error(), "--quiet and --progress") {
		t.Errorf("enqueue --quiet --progress: %v, want refused", err)
	}
}
