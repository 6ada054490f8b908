package testenv_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

// TestRedisAnswers: Redis starts on a free loopback port and answers; with
// a password, it is ready as soon as it answers at all, and refuses a
// client without it.
func TestRedisAnswers(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("get: %q %v", v, err)
	}

	addr := testenv.Redis(t, "--requirepass", "s3cret")
	anon := redis.NewClient(&redis.Options{Addr: addr})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("ping without the password: %v, want NOAUTH", err)
	}
	auth := redis.NewClient(&redis.Options{Addr: addr, Password: "s3cret"})
	defer auth.Close()
	if err := auth.Ping(ctx).Err(); err != nil {
		t.Errorf("ping with the password: %v", err)
	}
}

// TestServicesAnswer: Redis and MinIO start together; an object written to
// MinIO reads back, and Redis answers.
func TestServicesAnswer(t *testing.T) {
	ctx := context.Background()
	s := testenv.Services(t, testenv.ServicesOptions{AccessKey: "testenv-root", SecretKey: "testenv-root-secret"})
	st, err := storage.New(storage.Config{Endpoint: s.MinioAddr, AccessKey: "testenv-root", SecretKey: "testenv-root-secret", Bucket: "testenv"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, "jobs/x/hello.txt", strings.NewReader("hello"), 5, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := st.Read(ctx, "jobs/x/hello.txt", 100); err != nil || string(b) != "hello" {
		t.Errorf("read back %q, %v", b, err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.RedisAddr})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Error(err)
	}
}

// TestProcessOutputAndStop: a child's output is readable while it runs;
// Stop ends it (SIGTERM) and reports it exited by itself, and one that
// ignores SIGTERM is killed after the wait.
func TestProcessOutputAndStop(t *testing.T) {
	dir := t.TempDir()
	p := testenv.Start(t, exec.Command("sh", "-c", "echo ready; exec sleep 60"), dir+"/a.log")
	if out, err := p.WaitOutput("ready", 10*time.Second); err != nil || out != "ready\n" {
		t.Fatalf("output %q, %v", out, err)
	}
	if !p.Alive() || !p.Stop(10*time.Second) || p.Alive() {
		t.Error("sleep did not stop on SIGTERM")
	}
	stubborn := testenv.Start(t, exec.Command("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"), dir+"/b.log")
	if _, err := stubborn.WaitOutput("ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if stubborn.Stop(300 * time.Millisecond) {
		t.Error("a process ignoring SIGTERM stopped by itself")
	}
	if stubborn.Alive() {
		t.Error("still running after Stop")
	}
	gone := testenv.Start(t, exec.Command("sh", "-c", "echo bye; exit 3"), dir+"/c.log")
	if _, err := gone.WaitOutput("never written", 10*time.Second); err == nil || !strings.Contains(err.Error(), "bye") {
		t.Errorf("waiting on a process that exited: %v, want an error holding its output", err)
	}
}

// gateRecorder stands for a test given to a gate: it records whether the
// gate skipped or failed it, and ends the gate's goroutine as the real
// ones do.
type gateRecorder struct {
	testing.TB
	skipped, failed string
}

func (r *gateRecorder) Helper() {}

func (r *gateRecorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *gateRecorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}

// runGate runs gate on a gateRecorder in a goroutine of its own (which
// Skipf and Fatal end) and returns what it recorded.
func runGate(gate func(testing.TB)) *gateRecorder {
	r := &gateRecorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		gate(r)
	}()
	<-done
	return r
}

// TestGateSkipsOnlyUnderShort gives a gate a test that needs a program
// nobody has (and one everybody has): under -short it is skipped,
// otherwise it fails; both name the missing program alone. A test that
// needs root is skipped under -short whoever runs it, and otherwise fails
// unless run as root.
func TestGateSkipsOnlyUnderShort(t *testing.T) {
	was := testing.Short()
	defer flag.Set("test.short", fmt.Sprint(was))
	for _, short := range []bool{true, false} {
		if err := flag.Set("test.short", fmt.Sprint(short)); err != nil {
			t.Fatal(err)
		}
		r := runGate(func(tb testing.TB) { testenv.NeedBinary(tb, "sh", "sandq-no-such-program") })
		got := r.failed
		if short {
			got = r.skipped
		}
		if (short && r.failed != "") || (!short && r.skipped != "") || !strings.Contains(got, "not installed: sandq-no-such-program (install it)") || strings.Contains(got, "sh (") {
			t.Errorf("short=%v: skipped %q, failed %q; want only the missing program named", short, r.skipped, r.failed)
		}
		// Root is for the full tier: skipped under -short even as root;
		// otherwise a failure unless root.
		r = runGate(testenv.NeedRoot)
		root := os.Geteuid() == 0
		switch {
		case short && (r.skipped == "" || r.failed != ""):
			t.Errorf("NeedRoot under -short: skipped %q, failed %q; want skipped", r.skipped, r.failed)
		case !short && r.skipped != "":
			t.Errorf("NeedRoot without -short skipped: %q", r.skipped)
		case !short && root != (r.failed == ""):
			t.Errorf("NeedRoot without -short, as root %v: failed %q", root, r.failed)
		}
	}
	if t.Skipped() || t.Failed() {
		t.Fatal("the gate acted on the real test")
	}
}

// TestHelpers checks the stand-ins that need no root: the resolver answers
// only for its names, and ProbeResults reads BypassProbe's lines.
func TestHelpers(t *testing.T) {
	r := testenv.Resolver{"upstream.sandq.test": testenv.Loopback}
	if ips, err := r.LookupIP(context.Background(), "ip", "Upstream.Sandq.Test."); err != nil || len(ips) != 1 || !ips[0].IsLoopback() {
		t.Errorf("a known name: %v %v", ips, err)
	}
	if _, err := r.LookupIP(context.Background(), "ip", "example.org"); err == nil {
		t.Error("an unknown name resolved")
	}
	testenv.NeedBinary(t, "python3")
	l := testenv.FreeAddr(t) // nothing listens there
	out, err := exec.Command("python3", "-c", testenv.BypassProbe, "2", "tcp:"+l).CombinedOutput()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	if got := testenv.ProbeResults(string(out))["tcp:"+l]; len(got) != 2 || got[0] != "ConnectionRefusedError" {
		t.Errorf("probe of a closed port: %v\n%s", got, out)
	}
}
