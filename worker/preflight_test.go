package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

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
func workerConfig(t *testing.T, redisAddr string) jobs.Config {
	return jobs.Config{
		RedisAddr: redisAddr,
		Storage:   storage.Config{Endpoint: "127.0.0.1:1", AccessKey: "access", SecretKey: "secret", Bucket: "sandq"},
		Worker:    jobs.WorkerConfig{ImageDir: fakeImageDir(t), StateDir: t.TempDir()},
	}
}

func newTestWorker(t *testing.T, cfg jobs.Config) (*Worker, error) {
	t.Helper()
	store, err := storage.New(cfg.WithDefaults().Storage)
	if err != nil {
		t.Fatal(err)
	}
	return New(cfg, nil, store, nil)
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
			addr := testenv.Redis(t, c.args...)
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
			if !errors.Is(err, jobs.ErrRedisEviction) {
				t.Errorf("error %v is not jobs.ErrRedisEviction", err)
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
		addr := testenv.Redis(t, args...)
		c := redis.NewClient(&redis.Options{Addr: addr})
		if err := jobs.CheckRedisEviction(context.Background(), c); err != nil {
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
		t.Fatalf("New with a missing image: %v", err)
	}
	t.Logf("refused: %v", err)
	// One of the other images jobs may name, missing.
	cfg = workerConfig(t, "127.0.0.1:1")
	cfg.Worker.Images = []string{"default", "gone"}
	if _, err := newTestWorker(t, cfg); err == nil || !strings.Contains(err.Error(), `worker image "gone"`) {
		t.Fatalf("New with a missing --images entry: %v", err)
	}
	// An image whose /tmp is empty would get an unbounded tmpfs there.
	cfg = workerConfig(t, "127.0.0.1:1")
	os.Remove(filepath.Join(cfg.Worker.ImageDir, "default", "rootfs", "tmp", ".sandq"))
	if _, err := newTestWorker(t, cfg); err == nil || !strings.Contains(err.Error(), "/tmp must exist and not be empty") {
		t.Fatalf("New with an empty /tmp in the image: %v", err)
	}
}
