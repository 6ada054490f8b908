package jobs

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/storage"
)

// startRedis runs a real redis-server with extra arguments on a free
// loopback port until the test ends. Without redis-server the test fails.
func startRedis(t *testing.T, username, password string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is needed (scripts/install-deps.sh installs it): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin, append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no"}, args...)...)
	logf, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c := redis.NewClient(&redis.Options{Addr: addr, Username: username, Password: password})
	defer c.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := c.Ping(context.Background()).Err(); err == nil {
			return addr
		} else if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server %v not ready: %v\n%s", args, err, log)
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server %v exited:\n%s", args, log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fakeImageDir makes an image directory holding one image, "default", that
// passes the worker's image check: a rootfs with /bin and a file in /tmp.
func fakeImageDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "default", "rootfs")
	for _, d := range []string{"bin", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "tmp", ".sandq"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// workerConfig is a worker config for the refusal tests: the store is never
// reached, since every refusal comes first.
func workerConfig(t *testing.T, redisAddr string) Config {
	return Config{
		RedisAddr: redisAddr,
		Storage:   storage.Config{Endpoint: "127.0.0.1:1", AccessKey: "access", SecretKey: "secret", Bucket: "sandq"},
		Worker:    WorkerConfig{ImageDir: fakeImageDir(t), StateDir: t.TempDir()},
	}
}

func newTestWorker(t *testing.T, cfg Config) (*Worker, error) {
	t.Helper()
	store, err := storage.New(cfg.WithDefaults().Storage)
	if err != nil {
		t.Fatal(err)
	}
	return NewWorker(cfg, nil, store, nil)
}

// TestWorkerRefusesEvictingRedis starts workers against real Redis servers
// whose maxmemory-policy is not noeviction, read through CONFIG GET or, with
// CONFIG renamed away, INFO; and against one where this user may run
// neither. Each worker refuses to start, naming the policy.
func TestWorkerRefusesEvictingRedis(t *testing.T) {
	cases := []struct {
		name           string
		user, password string
		args           []string
		want           []string
	}{
		{"allkeys-lru", "", "", []string{"--maxmemory-policy", "allkeys-lru"}, []string{"maxmemory-policy is allkeys-lru", "needs noeviction", "maxmemory-policy noeviction"}},
		{"volatile-ttl", "", "", []string{"--maxmemory-policy", "volatile-ttl"}, []string{"maxmemory-policy is volatile-ttl"}},
		{"allkeys-lru, CONFIG renamed away", "", "", []string{"--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""}, []string{"maxmemory-policy is allkeys-lru"}},
		{"neither CONFIG nor INFO allowed", "limited", "pw", []string{
			"--maxmemory-policy", "noeviction",
			"--user", "default", "off", "--user", "limited", "on", ">pw", "~*", "&*", "+@all", "-config", "-info",
		}, []string{"cannot read Redis's maxmemory-policy", "CONFIG GET: NOPERM", "INFO memory: NOPERM"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := startRedis(t, c.user, c.password, c.args...)
			cfg := workerConfig(t, addr)
			cfg.RedisUsername, cfg.RedisPassword = c.user, c.password
			w, err := newTestWorker(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer w.rdb.Close()
			err = w.Start(context.Background())
			if err == nil {
				w.Shutdown()
				t.Fatal("the worker started")
			}
			t.Logf("refused: %v", err)
			if !errors.Is(err, ErrRedisEviction) {
				t.Errorf("error %v is not ErrRedisEviction", err)
			}
			for _, s := range append(c.want, "redis at "+addr) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

// TestRedisEvictionCheckPasses: noeviction is accepted, through CONFIG GET
// and, with CONFIG renamed away, through INFO.
func TestRedisEvictionCheckPasses(t *testing.T) {
	for _, args := range [][]string{
		{"--maxmemory-policy", "noeviction"},
		{"--maxmemory-policy", "noeviction", "--rename-command", "CONFIG", ""},
	} {
		addr := startRedis(t, "", "", args...)
		c := redis.NewClient(&redis.Options{Addr: addr})
		if err := CheckRedisEviction(context.Background(), c); err != nil {
			t.Errorf("redis-server %v: %v", args, err)
		}
		c.Close()
	}
}

func TestWorkerRefusesMissingImage(t *testing.T) {
	cfg := workerConfig(t, "127.0.0.1:1")
	cfg.Worker.Image = "absent"
	_, err := newTestWorker(t, cfg)
	if err == nil || !strings.Contains(err.Error(), `worker image "absent"`) || !strings.Contains(err.Error(), "sandq image build absent") {
		t.Fatalf("NewWorker with a missing image: %v", err)
	}
	t.Logf("refused: %v", err)
	// One of the other images jobs may name, missing.
	cfg = workerConfig(t, "127.0.0.1:1")
	cfg.Worker.Images = []string{"default", "gone"}
	if _, err := newTestWorker(t, cfg); err == nil || !strings.Contains(err.Error(), `worker image "gone"`) {
		t.Fatalf("NewWorker with a missing --images entry: %v", err)
	}
	// An image whose /tmp is empty would get an unbounded tmpfs there.
	cfg = workerConfig(t, "127.0.0.1:1")
	os.Remove(filepath.Join(cfg.Worker.ImageDir, "default", "rootfs", "tmp", ".sandq"))
	if _, err := newTestWorker(t, cfg); err == nil || !strings.Contains(err.Error(), "/tmp must exist and not be empty") {
		t.Fatalf("NewWorker with an empty /tmp in the image: %v", err)
	}
}
