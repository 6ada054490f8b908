package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// Defaults match `sandq dev`, so producers and workers need no flags
// against the local stack. Production sets every credential.
const (
	defaultRedisAddr  = "127.0.0.1:6379"
	defaultS3Endpoint = "127.0.0.1:9000"
	defaultAccessKey  = "sandq"
	defaultSecretKey  = "sandq-dev-secret"
	defaultBucket     = "sandq"
)

func env(name string) []string { return []string{"SANDQ_" + name} }

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "redis-addr", Value: defaultRedisAddr, EnvVars: env("REDIS_ADDR"), Usage: "Redis host:port"},
		&cli.StringFlag{Name: "redis-username", EnvVars: env("REDIS_USERNAME"), Usage: "Redis ACL user"},
		&cli.StringFlag{Name: "redis-password", EnvVars: env("REDIS_PASSWORD"), Usage: "Redis password"},
		&cli.IntFlag{Name: "redis-db", EnvVars: env("REDIS_DB"), Usage: "Redis database number"},
		&cli.StringFlag{Name: "s3-endpoint", Value: defaultS3Endpoint, EnvVars: env("S3_ENDPOINT"), Usage: "S3 API host:port"},
		&cli.StringFlag{Name: "s3-public-endpoint", EnvVars: env("S3_PUBLIC_ENDPOINT"), Usage: "host:port written into presigned links (default: --s3-endpoint)"},
		&cli.BoolFlag{Name: "s3-secure", EnvVars: env("S3_SECURE"), Usage: "use https to reach S3"},
		&cli.StringFlag{Name: "s3-access-key", Value: defaultAccessKey, EnvVars: env("S3_ACCESS_KEY"), Usage: "S3 access key"},
		&cli.StringFlag{Name: "s3-secret-key", Value: defaultSecretKey, EnvVars: env("S3_SECRET_KEY"), Usage: "S3 secret key"},
		&cli.StringFlag{Name: "s3-bucket", Value: defaultBucket, EnvVars: env("S3_BUCKET"), Usage: "bucket for inputs, outputs and logs"},
		&cli.StringFlag{Name: "s3-region", Value: "us-east-1", EnvVars: env("S3_REGION"), Usage: "S3 region (set, so presigning needs no request)"},
		&cli.StringFlag{Name: "queue", Value: "default", EnvVars: env("QUEUE"), Usage: "queue for jobs that name none"},
		&cli.DurationFlag{Name: "default-timeout", Value: 5 * time.Minute, EnvVars: env("DEFAULT_TIMEOUT")},
		&cli.DurationFlag{Name: "max-timeout", Value: time.Hour, EnvVars: env("MAX_TIMEOUT")},
		&cli.StringFlag{Name: "default-memory", Value: "2GiB", EnvVars: env("DEFAULT_MEMORY")},
		&cli.StringFlag{Name: "max-memory", Value: "8GiB", EnvVars: env("MAX_MEMORY")},
		&cli.StringFlag{Name: "default-disk", Value: "2GiB", EnvVars: env("DEFAULT_DISK")},
		&cli.StringFlag{Name: "max-disk", Value: "10GiB", EnvVars: env("MAX_DISK")},
		&cli.StringFlag{Name: "default-output-size", Value: "512MiB", EnvVars: env("DEFAULT_OUTPUT_SIZE")},
		&cli.StringFlag{Name: "max-output-size", Value: "2GiB", EnvVars: env("MAX_OUTPUT_SIZE")},
		&cli.IntFlag{Name: "default-output-files", Value: 1000, EnvVars: env("DEFAULT_OUTPUT_FILES")},
		&cli.IntFlag{Name: "max-output-files", Value: 10000, EnvVars: env("MAX_OUTPUT_FILES")},
		&cli.IntFlag{Name: "max-inputs", Value: 100, EnvVars: env("MAX_INPUTS")},
		&cli.StringFlag{Name: "max-input-size", Value: "1GiB", EnvVars: env("MAX_INPUT_SIZE"), Usage: "largest input file"},
		&cli.StringFlag{Name: "max-inputs-size", Value: "4GiB", EnvVars: env("MAX_INPUTS_SIZE"), Usage: "all inputs of a job together"},
		&cli.StringFlag{Name: "max-script-size", Value: "1MiB", EnvVars: env("MAX_SCRIPT_SIZE")},
		&cli.IntFlag{Name: "max-retry", Value: 3, EnvVars: env("MAX_RETRY"), Usage: "retries of a job the system could not run"},
		&cli.DurationFlag{Name: "result-retention", Value: 7 * 24 * time.Hour, EnvVars: env("RESULT_RETENTION")},
		&cli.DurationFlag{Name: "link-expiry", Value: 24 * time.Hour, EnvVars: env("LINK_EXPIRY"), Usage: "life of presigned links (at most 168h)"},
		&cli.StringFlag{Name: "server", EnvVars: env("SERVER"), Usage: "API server URL: enqueue, status, wait and cancel go through it instead of Redis and S3"},
		&cli.StringFlag{Name: "token", EnvVars: env("TOKEN"), Usage: "API token, with --server"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error"},
	}
}

func workerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "concurrency", EnvVars: env("CONCURRENCY"), Usage: "jobs run at once (default: number of CPUs)"},
		&cli.StringFlag{Name: "queues", Value: "default=1", EnvVars: env("QUEUES"), Usage: "queues and priorities, q=n,..."},
		&cli.StringFlag{Name: "state-dir", Value: "/var/lib/sandq", EnvVars: env("STATE_DIR"), Usage: "sandbox scratch space and runsc state"},
		&cli.StringFlag{Name: "runsc", Value: "runsc", EnvVars: env("RUNSC"), Usage: "runsc binary"},
		&cli.StringFlag{Name: "platform", Value: "systrap", EnvVars: env("PLATFORM"), Usage: "runsc platform"},
		&cli.StringFlag{Name: "image-dir", EnvVars: env("IMAGE_DIR"), Usage: "image directory (default: STATE_DIR/images)"},
		&cli.StringFlag{Name: "image", Value: "default", EnvVars: env("IMAGE"), Usage: "image jobs run on unless they name one"},
		&cli.StringSliceFlag{Name: "images", EnvVars: env("IMAGES"), Usage: "other images jobs on this worker's queues may name (comma-separated or repeated)"},
		&cli.StringFlag{Name: "log-size", Value: "16MiB", EnvVars: env("LOG_SIZE"), Usage: "stored bytes of each of stdout and stderr"},
		&cli.StringFlag{Name: "max-result-size", Value: jobs.FormatSize(jobs.DefaultMaxResultBytes), EnvVars: env("MAX_RESULT_SIZE"), Usage: "largest result document (JSON); over it, lists are cut and kept whole in a manifest object (at least " + jobs.FormatSize(jobs.MinMaxResultBytes) + ")"},
		&cli.DurationFlag{Name: "task-check-interval", Value: 10 * time.Millisecond, EnvVars: env("TASK_CHECK_INTERVAL"), Usage: "how often an idle worker polls Redis for work"},
		&cli.IntFlag{Name: "warm-sandboxes", EnvVars: env("WARM_SANDBOXES"), Usage: "sandboxes kept created ahead of demand for jobs of the default image and limits without network (0: off); such jobs skip runsc create"},
		&cli.DurationFlag{Name: "shutdown-grace", Value: 30 * time.Second, EnvVars: env("SHUTDOWN_GRACE"), Usage: "time running jobs get to finish on SIGTERM"},
		&cli.StringFlag{Name: "memory-budget", Value: jobs.DefaultMemoryBudget.String(), EnvVars: env("MEMORY_BUDGET"),
			Usage: "most memory the running jobs' limits may add up to: a fraction of the host's memory (0.75), a percentage (75%) or a size (8GiB); over it, jobs wait"},
		&cli.StringFlag{Name: "egress-config", EnvVars: env("EGRESS_CONFIG"), Usage: "network policy file (JSON); without it no job gets network"},
		&cli.StringFlag{Name: "metrics-addr", Value: "127.0.0.1:9464", EnvVars: env("METRICS_ADDR"), Usage: "where the worker serves Prometheus metrics at /metrics (empty: off)"},
		&cli.StringFlag{Name: "webhook-config", EnvVars: env("WEBHOOK_CONFIG"), Usage: "webhook settings file (JSON): secrets, default URLs, retries"},
	}
}

func newLogger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// loadConfig maps flags and SANDQ_* variables onto jobs.Config.
func loadConfig(c *cli.Context) (jobs.Config, error) {
	cfg := jobs.Config{
		RedisAddr: c.String("redis-addr"), RedisUsername: c.String("redis-username"),
		RedisPassword: c.String("redis-password"), RedisDB: c.Int("redis-db"),
		Storage: storage.Config{
			Endpoint: c.String("s3-endpoint"), PublicEndpoint: c.String("s3-public-endpoint"),
			AccessKey: c.String("s3-access-key"), SecretKey: c.String("s3-secret-key"),
			Bucket: c.String("s3-bucket"), Region: c.String("s3-region"), Secure: c.Bool("s3-secure"),
		},
		Queue:           c.String("queue"),
		MaxInputs:       c.Int("max-inputs"),
		MaxRetry:        c.Int("max-retry"),
		ResultRetention: c.Duration("result-retention"),
		LinkExpiry:      c.Duration("link-expiry"),
	}
	if cfg.MaxRetry == 0 {
		cfg.MaxRetry = jobs.NoRetry
	}
	cfg.DefaultLimits.Timeout = c.Duration("default-timeout")
	cfg.MaxLimits.Timeout = c.Duration("max-timeout")
	cfg.DefaultLimits.OutputFiles = c.Int("default-output-files")
	cfg.MaxLimits.OutputFiles = c.Int("max-output-files")
	sizes := []struct {
		flag string
		dst  *int64
	}{
		{"default-memory", &cfg.DefaultLimits.Memory}, {"max-memory", &cfg.MaxLimits.Memory},
		{"default-disk", &cfg.DefaultLimits.Disk}, {"max-disk", &cfg.MaxLimits.Disk},
		{"default-output-size", &cfg.DefaultLimits.OutputBytes}, {"max-output-size", &cfg.MaxLimits.OutputBytes},
		{"max-input-size", &cfg.MaxInputBytes}, {"max-inputs-size", &cfg.MaxInputsTotal}, {"max-script-size", &cfg.MaxScriptBytes},
	}
	if hasFlag(c, "log-size") {
		sizes = append(sizes, struct {
			flag string
			dst  *int64
		}{"log-size", &cfg.Worker.LogBytes}, struct {
			flag string
			dst  *int64
		}{"max-result-size", &cfg.MaxResultBytes})
	}
	for _, s := range sizes {
		v, err := jobs.ParseSize(c.String(s.flag))
		if err != nil {
			return cfg, fmt.Errorf("--%s: %w", s.flag, err)
		}
		*s.dst = v
	}
	if hasFlag(c, "state-dir") {
		w := &cfg.Worker
		w.Concurrency = c.Int("concurrency")
		w.StateDir = c.String("state-dir")
		w.Runsc = c.String("runsc")
		w.Platform = c.String("platform")
		w.ImageDir = c.String("image-dir")
		w.Image = c.String("image")
		for _, v := range c.StringSlice("images") {
			for _, name := range strings.Split(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					w.Images = append(w.Images, name)
				}
			}
		}
		w.ShutdownGrace = c.Duration("shutdown-grace")
		w.TaskCheckInterval = c.Duration("task-check-interval")
		w.WarmSandboxes = c.Int("warm-sandboxes")
		q, err := parseQueues(c.String("queues"))
		if err != nil {
			return cfg, err
		}
		w.Queues = q
		if w.MemoryBudget, err = jobs.ParseMemoryBudget(c.String("memory-budget")); err != nil {
			return cfg, fmt.Errorf("--memory-budget: %w", err)
		}
		if path := c.String("egress-config"); path != "" {
			if cfg.Egress, err = jobs.LoadEgressConfig(path); err != nil {
				return cfg, err
			}
		}
		if path := c.String("webhook-config"); path != "" {
			if cfg.Webhook, err = jobs.LoadWebhookConfig(path); err != nil {
				return cfg, err
			}
		}
	}
	cfg = cfg.WithDefaults()
	return cfg, cfg.Validate()
}

// hasFlag reports whether the running command defines the flag (whether or
// not it was set).
func hasFlag(c *cli.Context, name string) bool {
	return c.Command != nil && findFlag(c.Command.Flags, name) != nil
}

// setGlobalsAsEnv returns SANDQ_* assignments for every global flag set on
// this command line, so a child sandq process gets the same settings.
func setGlobalsAsEnv(c *cli.Context) []string {
	var out []string
	for _, f := range globalFlags() {
		name := f.Names()[0]
		ev, ok := f.(interface{ GetEnvVars() []string })
		if !ok || !c.IsSet(name) || len(ev.GetEnvVars()) == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("%s=%v", ev.GetEnvVars()[0], c.Value(name)))
	}
	return out
}

func parseQueues(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, prio, found := strings.Cut(part, "=")
		p := 1
		if found {
			n, err := strconv.Atoi(prio)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--queues: priority of %s must be a whole number >= 1", name)
			}
			p = n
		}
		if err := jobs.CheckQueue(name); err != nil {
			return nil, fmt.Errorf("--queues: %w", err)
		}
		out[name] = p
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--queues: no queue named")
	}
	return out, nil
}

func newStore(cfg jobs.Config) (*storage.Store, error) {
	return storage.New(cfg.Storage)
}
