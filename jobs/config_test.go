package jobs

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/storage"
)

// validConfig is the smallest config that validates: defaults plus a store.
func validConfig() Config {
	return Config{Storage: storage.Config{
		Endpoint:  "127.0.0.1:9000",
		AccessKey: "access",
		SecretKey: "secret",
		Bucket:    "sandq",
	}}.WithDefaults()
}

func TestConfigWithDefaults(t *testing.T) {
	var zero Config
	c := zero.WithDefaults()

	checks := []struct {
		name      string
		got, want any
	}{
		{"RedisAddr", c.RedisAddr, "127.0.0.1:6379"},
		{"RedisDB", c.RedisDB, 0},
		{"Storage.Region", c.Storage.Region, "us-east-1"},
		{"Queue", c.Queue, "default"},
		{"DefaultLimits", c.DefaultLimits, Limits{Timeout: 5 * time.Minute, Memory: 2 << 30, Disk: 2 << 30, OutputBytes: 512 << 20, OutputFiles: 1000, CPUs: min(1, float64(runtime.NumCPU()))}},
		{"MaxLimits", c.MaxLimits, Limits{Timeout: time.Hour, Memory: 8 << 30, Disk: 10 << 30, OutputBytes: 2 << 30, OutputFiles: 10000, CPUs: float64(runtime.NumCPU())}},
		{"MaxInputs", c.MaxInputs, 100},
		{"MaxInputBytes", c.MaxInputBytes, int64(1 << 30)},
		{"MaxInputsTotal", c.MaxInputsTotal, int64(4 << 30)},
		{"MaxScriptBytes", c.MaxScriptBytes, int64(1 << 20)},
		{"MaxArgs", c.MaxArgs, 256},
		{"MaxArgBytes", c.MaxArgBytes, 64 << 10},
		{"MaxEnv", c.MaxEnv, 128},
		{"MaxEnvBytes", c.MaxEnvBytes, 64 << 10},
		{"MaxRetry", c.MaxRetry, 3},
		{"ResultRetention", c.ResultRetention, 7 * 24 * time.Hour},
		{"LinkExpiry", c.LinkExpiry, 24 * time.Hour},
		{"FinishAllowance", c.FinishAllowance, 15 * time.Minute},
		{"PollInterval", c.PollInterval, 200 * time.Millisecond},
		{"Worker.Concurrency", c.Worker.Concurrency, runtime.NumCPU()},
		{"Worker.Queues", len(c.Worker.Queues) == 1 && c.Worker.Queues["default"] == 1, true},
		{"Worker.StateDir", c.Worker.StateDir, executor.DefaultStateDir},
		{"Worker.Runsc", c.Worker.Runsc, executor.DefaultRunsc},
		{"Worker.Platform", c.Worker.Platform, executor.DefaultPlatform},
		// The worker finds images where `sandq image` puts them.
		{"Worker.ImageDir", c.Worker.ImageDir, image.DefaultDir},
		{"Worker.Image", c.Worker.Image, "default"},
		{"Worker.UID", c.Worker.UID, uint32(1000)},
		{"Worker.GID", c.Worker.GID, uint32(1000)},
		{"Worker.Pids", c.Worker.Pids, int64(1024)},
		{"Worker.LogBytes", c.Worker.LogBytes, int64(16 << 20)},
		{"Worker.LogTail", c.Worker.LogTail, 8 << 10},
		{"Worker.LiveOutputBytes", c.Worker.LiveOutputBytes, int64(1 << 20)},
		{"Worker.ShutdownGrace", c.Worker.ShutdownGrace, 30 * time.Second},
		{"Worker.TaskCheckInterval", c.Worker.TaskCheckInterval, 10 * time.Millisecond},
		{"ImagePath", c.ImagePath(), image.DefaultDir + "/default/rootfs"},
	}
	for _, ch := range checks {
		t.Run(ch.name, func(t *testing.T) {
			if ch.got != ch.want {
				t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
			}
		})
	}

	t.Run("does not change the receiver", func(t *testing.T) {
		if zero.RedisAddr != "" || zero.Worker.Queues != nil || zero.DefaultLimits != (Limits{}) {
			t.Errorf("WithDefaults changed its receiver: %+v", zero)
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		again := c.WithDefaults()
		if again.DefaultLimits != c.DefaultLimits || again.MaxLimits != c.MaxLimits || again.Worker.ImageDir != c.Worker.ImageDir || again.LinkExpiry != c.LinkExpiry {
			t.Errorf("WithDefaults twice differs: %+v vs %+v", again, c)
		}
	})

	t.Run("keeps set fields", func(t *testing.T) {
		in := Config{
			RedisAddr:     "redis:6380",
			Queue:         "fast",
			DefaultLimits: Limits{Memory: 128 << 20},
			MaxLimits:     Limits{OutputFiles: 5},
			MaxRetry:      7,
			LinkExpiry:    time.Hour,
			Worker: WorkerConfig{
				Queues:   map[string]int{"fast": 3},
				StateDir: "/srv/sandq",
				Image:    "py312",
				UID:      2000,
				LogTail:  100,
			},
		}
		got := in.WithDefaults()
		if got.RedisAddr != "redis:6380" || got.Queue != "fast" || got.MaxRetry != 7 || got.LinkExpiry != time.Hour {
			t.Errorf("top-level fields overwritten: %+v", got)
		}
		if got.DefaultLimits.Memory != 128<<20 || got.DefaultLimits.Timeout != 5*time.Minute {
			t.Errorf("DefaultLimits = %+v, want memory kept and the rest defaulted", got.DefaultLimits)
		}
		if got.MaxLimits.OutputFiles != 5 || got.MaxLimits.Memory != 8<<30 {
			t.Errorf("MaxLimits = %+v, want output files kept and the rest defaulted", got.MaxLimits)
		}
		w := got.Worker
		if len(w.Queues) != 1 || w.Queues["fast"] != 3 {
			t.Errorf("Queues = %v", w.Queues)
		}
		if w.StateDir != "/srv/sandq" || w.ImageDir != "/srv/sandq/images" {
			t.Errorf("StateDir, ImageDir = %q, %q; want the image dir under the state dir", w.StateDir, w.ImageDir)
		}
		if w.Image != "py312" || w.UID != 2000 || w.GID != 1000 || w.LogTail != 100 {
			t.Errorf("worker = %+v", w)
		}
		if p := got.ImagePath(); p != "/srv/sandq/images/py312/rootfs" {
			t.Errorf("ImagePath = %q", p)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	t.Run("defaults with a store", func(t *testing.T) {
		if err := validConfig().Validate(); err != nil {
			t.Fatalf("Validate: %v", err)
		}
	})

	t.Run("defaults resolve to themselves", func(t *testing.T) {
		c := validConfig()
		got, err := LimitRequest{}.Resolve(c.DefaultLimits, c.MaxLimits)
		if err != nil || got != c.DefaultLimits {
			t.Errorf("Resolve(zero) = %+v, %v; want the defaults", got, err)
		}
		m := c.MaxLimits
		got, err = LimitRequest{m.Timeout.Seconds(), m.Memory, m.Disk, m.OutputBytes, m.OutputFiles, &m.CPUs}.Resolve(c.DefaultLimits, m)
		if err != nil || got != m {
			t.Errorf("Resolve(max) = %+v, %v; want the maxima", got, err)
		}
	})

	ok := []struct {
		name   string
		modify func(*Config)
	}{
		{"link expiry of exactly 7 days", func(c *Config) { c.LinkExpiry = 7 * 24 * time.Hour }},
		{"defaults equal to the maxima", func(c *Config) { c.DefaultLimits = c.MaxLimits }},
		{"defaults at the minima", func(c *Config) {
			c.DefaultLimits.Timeout, c.DefaultLimits.Memory, c.DefaultLimits.Disk = time.Second, MinMemory, MinDisk
		}},
		{"several worker queues", func(c *Config) { c.Worker.Queues = map[string]int{"default": 1, "high": 6, "low.v2": 1} }},
		{"image name with dots", func(c *Config) { c.Worker.Image = "python-3.12" }},
		{"log tail equal to log bytes", func(c *Config) { c.Worker.LogBytes, c.Worker.LogTail = 4096, 4096 }},
		{"no live output", func(c *Config) { c.Worker.LiveOutputBytes = NoLiveOutput }},
	}
	for _, tt := range ok {
		t.Run("ok/"+tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}

	refused := []struct {
		name   string
		modify func(*Config)
		msg    string
	}{
		{"no endpoint", func(c *Config) { c.Storage.Endpoint = "" }, "s3 endpoint is empty"},
		{"endpoint with scheme", func(c *Config) { c.Storage.Endpoint = "http://minio:9000" }, "host:port"},
		{"no secret key", func(c *Config) { c.Storage.SecretKey = "" }, "secret key"},
		{"no bucket", func(c *Config) { c.Storage.Bucket = "" }, "bucket"},
		{"bad default queue", func(c *Config) { c.Queue = "bad queue" }, "default queue"},

		{"default timeout over max", func(c *Config) { c.DefaultLimits.Timeout = 2 * time.Hour }, "default timeout 2h0m0s is over the maximum 1h0m0s"},
		{"default memory over max", func(c *Config) { c.DefaultLimits.Memory = 16 << 30 }, "default memory 16GiB is over the maximum 8GiB"},
		{"default disk over max", func(c *Config) { c.DefaultLimits.Disk = 20 << 30 }, "default disk 20GiB is over the maximum 10GiB"},
		{"default output size over max", func(c *Config) { c.DefaultLimits.OutputBytes = 4 << 30 }, "default output size 4GiB is over the maximum 2GiB"},
		{"default output files over max", func(c *Config) { c.DefaultLimits.OutputFiles = 10001 }, "default output files 10001 is over the maximum 10000"},
		{"max memory under default", func(c *Config) { c.MaxLimits.Memory = 1 << 30 }, "default memory 2GiB is over the maximum 1GiB"},

		{"default timeout under 1s", func(c *Config) { c.DefaultLimits.Timeout = time.Millisecond }, "under the minimum"},
		{"default memory under 64MiB", func(c *Config) { c.DefaultLimits.Memory = MinMemory - 1 }, "under the minimum"},
		{"default disk under 16MiB", func(c *Config) { c.DefaultLimits.Disk = MinDisk - 1 }, "under the minimum"},

		{"link expiry over 7 days", func(c *Config) { c.LinkExpiry = 7*24*time.Hour + time.Second }, "link expiry"},
		{"link expiry of 30 days", func(c *Config) { c.LinkExpiry = 30 * 24 * time.Hour }, "link expiry"},
		{"negative link expiry", func(c *Config) { c.LinkExpiry = -time.Hour }, "link expiry"},

		{"max retry under NoRetry", func(c *Config) { c.MaxRetry = -2 }, "max retry"},
		{"result size cap under 64KiB", func(c *Config) { c.MaxResultBytes = MinMaxResultBytes - 1 }, "max result size"},
		{"worker serving the webhook queue", func(c *Config) { c.Worker.Queues = map[string]int{"webhooks": 1} }, "webhook delivery queue"},
		{"negative concurrency", func(c *Config) { c.Worker.Concurrency = -1 }, "concurrency"},
		{"log bytes under 1KiB", func(c *Config) { c.Worker.LogBytes = 1023 }, "worker log limits"},
		{"negative log tail", func(c *Config) { c.Worker.LogTail = -1 }, "worker log limits"},
		{"log tail over log bytes", func(c *Config) { c.Worker.LogBytes, c.Worker.LogTail = 4096, 4097 }, "worker log limits"},
		{"live output size under NoLiveOutput", func(c *Config) { c.Worker.LiveOutputBytes = -2 }, "live output size -2"},

		{"worker queue with a space", func(c *Config) { c.Worker.Queues = map[string]int{"default": 1, "bad queue": 1} }, "worker queues"},
		{"worker queue with a slash", func(c *Config) { c.Worker.Queues = map[string]int{"a/b": 1} }, "worker queues"},
		{"empty worker queue name", func(c *Config) { c.Worker.Queues = map[string]int{"": 1} }, "worker queues"},
		{"worker queue name too long", func(c *Config) { c.Worker.Queues = map[string]int{strings.Repeat("q", 65): 1} }, "worker queues"},
		{"worker queue priority 0", func(c *Config) { c.Worker.Queues = map[string]int{"default": 0} }, "priority must be at least 1"},
		{"worker queue negative priority", func(c *Config) { c.Worker.Queues = map[string]int{"default": -2} }, "priority must be at least 1"},

		{"image with a slash", func(c *Config) { c.Worker.Image = "a/b" }, `"a/b" is not an image name`},
		{"other image with a slash", func(c *Config) { c.Worker.Images = []string{"ok", "x/y"} }, `"x/y" is not an image name`},
		{"hidden image", func(c *Config) { c.Worker.Image = ".import-x" }, "is not an image name"},
		{"task check interval too short", func(c *Config) { c.Worker.TaskCheckInterval = time.Microsecond }, "task check interval 1µs"},
		{"negative warm sandboxes", func(c *Config) { c.Worker.WarmSandboxes = -1 }, "warm sandboxes -1: want 0 (off) to 64"},
		{"too many warm sandboxes", func(c *Config) { c.Worker.WarmSandboxes = 65 }, "warm sandboxes 65: want 0 (off) to 64"},
		{"image with a trailing slash", func(c *Config) { c.Worker.Image = "img/" }, "is not an image name"},
		{"absolute image", func(c *Config) { c.Worker.Image = "/etc" }, "is not an image name"},
		{"image ..", func(c *Config) { c.Worker.Image = ".." }, "is not an image name"},
		{"image .", func(c *Config) { c.Worker.Image = "." }, "is not an image name"},
		{"image with a backslash", func(c *Config) { c.Worker.Image = `a\b` }, "is not an image name"},
		{"image with a NUL", func(c *Config) { c.Worker.Image = "a\x00b" }, "is not an image name"},
	}
	for _, tt := range refused {
		t.Run("refused/"+tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate passed, want an error containing %q", tt.msg)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Validate = %q, want it to contain %q", err, tt.msg)
			}
		})
	}

	t.Run("bad queue errors wrap a FieldError", func(t *testing.T) {
		for _, modify := range []func(*Config){
			func(c *Config) { c.Queue = "bad queue" },
			func(c *Config) { c.Worker.Queues = map[string]int{"bad queue": 1} },
		} {
			c := validConfig()
			modify(&c)
			var fe *FieldError
			if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "queue" {
				t.Errorf("Validate = %v, want a wrapped *FieldError for queue", err)
			}
		}
	})
}
