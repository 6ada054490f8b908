package testenv

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/devstack"
)

// ServicesOptions say how to start Redis and MinIO.
type ServicesOptions struct {
	// MinIO's root credentials.
	AccessKey, SecretKey string
	// AppendOnly turns on Redis's AOF persistence, as production runs it.
	AppendOnly bool
	// Host is the address both listen on (default loopback).
	Host   string
	Logger *slog.Logger
}

// StartServices starts Redis and MinIO with their data under dir, on free
// loopback ports, and waits until both answer; Stop stops them. For a
// TestMain; a test calls Services.
func StartServices(ctx context.Context, dir string, o ServicesOptions) (*devstack.Stack, error) {
	if err := CheckBinaries("redis-server", "minio"); err != nil {
		return nil, err
	}
	return devstack.Start(ctx, devstack.Options{Dir: dir, Host: o.Host, AccessKey: o.AccessKey, SecretKey: o.SecretKey, AppendOnly: o.AppendOnly, Logger: o.Logger})
}

// Services starts Redis and MinIO for one test; they stop when it ends.
// Without redis-server or minio the test is skipped under -short and fails
// otherwise.
func Services(t testing.TB, o ServicesOptions) *devstack.Stack {
	t.Helper()
	NeedBinary(t, "redis-server", "minio")
	s, err := StartServices(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Shared is Redis and MinIO shared by a package's tests: the first test
// that calls Get starts them (skipped or failed as by Services when they
// are not installed); TestMain calls Stop after m.Run. A package whose
// tests do not all need the services keeps the others running in the fast
// tier on a machine without them.
type Shared struct {
	Options ServicesOptions
	once    sync.Once
	dir     string
	stack   *devstack.Stack
	err     error
}

// Get starts the services once and returns them.
func (s *Shared) Get(t testing.TB) *devstack.Stack {
	t.Helper()
	NeedBinary(t, "redis-server", "minio")
	s.once.Do(func() {
		if s.dir, s.err = os.MkdirTemp("", "sandq-services-"); s.err != nil {
			return
		}
		s.stack, s.err = StartServices(context.Background(), s.dir, s.Options)
	})
	if s.err != nil {
		t.Fatalf("start Redis and MinIO: %v", s.err)
	}
	return s.stack
}

// Stop stops the services if they were started, and removes their data.
func (s *Shared) Stop() error {
	var err error
	if s.stack != nil {
		err = s.stack.Stop()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
	return err
}

// Redis runs a redis-server of its own for one test, with extra arguments
// (args: "--requirepass", "x", ...) after the defaults (loopback, a free
// port, a temporary directory, no persistence), until the test ends; it
// returns its address once the server answers. Without redis-server the
// test is skipped under -short and fails otherwise.
func Redis(t testing.TB, args ...string) string {
	t.Helper()
	NeedBinary(t, "redis-server")
	dir := t.TempDir()
	port := FreePort(t)
	logPath := filepath.Join(dir, "redis.log")
	p, err := StartProcess(exec.Command("redis-server", append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no"}, args...)...), logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := redisAnswers(addr)
		if err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server %v not ready: %v\n%s", args, err, p.Output())
		}
		select {
		case <-p.Exited():
			t.Fatalf("redis-server %v exited:\n%s", args, p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// redisAnswers sends PING and accepts any reply: an error reply (NOAUTH,
// a renamed command) is still a server that is up.
func redisAnswers(addr string) error {
	return redisAnswersWith(context.Background(), &redis.Options{Addr: addr})
}

// FreePort is a TCP port on 127.0.0.1 that nothing listened on a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePortOn(t, "127.0.0.1")
}

// handedOut are the ports FreePortOn gave this test process: the kernel
// may pick a port it has just freed again, and two services of one test
// given the same port fail in ways that look like other bugs (a request
// for one answered by the other).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreeAddr is "127.0.0.1:PORT" of a FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
