package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// The defaults of the command line's own settings, which no package
// applies. The S3 ones match `sandq dev`, so producers and workers need no
// flags against the local stack; production sets every credential. The
// defaults of everything else are the packages' (jobs/defaults.go,
// executor/defaults.go, ...): a flag shows one in its help (DefaultText)
// and passes only what the user set, for the package to default the rest.
const (
	defaultS3Endpoint  = "127.0.0.1:9000"
	defaultAccessKey   = "sandq"
	defaultSecretKey   = "sandq-dev-secret"
	defaultBucket      = "sandq"
	defaultLogLevel    = "info"
	defaultListen      = "127.0.0.1:8080"
	defaultMetricsAddr = "127.0.0.1:9464"
)

func env(name string) []string { return []string{"SANDQ_" + name} }

// Help texts of defaults, as urfave/cli prints a flag's own Value.
func quoted(s string) string              { return strconv.Quote(s) }
func sizeText(n int64) string             { return quoted(jobs.FormatSize(n)) }
func hours(d time.Duration) string        { return strconv.Itoa(int(d.Hours())) + "h" }
func intText[T ~int | ~int64](n T) string { return strconv.FormatInt(int64(n), 10) }

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "redis-addr", DefaultText: quoted(jobs.DefaultRedisAddr), EnvVars: env("REDIS_ADDR"), Usage: "Redis host:port"},
		&cli.StringFlag{Name: "redis-username", EnvVars: env("REDIS_USERNAME"), Usage: "Redis ACL user"},
		&cli.StringFlag{Name: "redis-password", EnvVars: env("REDIS_PASSWORD"), Usage: "Redis password"},
		&cli.IntFlag{Name: "redis-db", EnvVars: env("REDIS_DB"), Usage: "Redis database number"},
		&cli.StringFlag{Name: "redis-url", EnvVars: env("REDIS_URL"), Usage: "Redis by URL: redis://, rediss:// (TLS), redis+sentinel://h1:p1,h2:p2/MASTER, redis+cluster://h1:p1,h2:p2 (instead of --redis-addr)"},
		&cli.StringSliceFlag{Name: "redis-sentinels", EnvVars: env("REDIS_SENTINELS"), Usage: "Redis Sentinels host:port,... (with --redis-master-name)"},
		&cli.StringFlag{Name: "redis-master-name", EnvVars: env("REDIS_MASTER_NAME"), Usage: "name of the primary the Sentinels watch"},
		&cli.StringFlag{Name: "redis-sentinel-username", EnvVars: env("REDIS_SENTINEL_USERNAME"), Usage: "the Sentinels' ACL user"},
		&cli.StringFlag{Name: "redis-sentinel-password", EnvVars: env("REDIS_SENTINEL_PASSWORD"), Usage: "the Sentinels' password"},
		&cli.StringSliceFlag{Name: "redis-cluster", EnvVars: env("REDIS_CLUSTER"), Usage: "Redis Cluster seed nodes host:port,..."},
		&cli.StringFlag{Name: "redis-ca-file", EnvVars: env("REDIS_CA_FILE"), Usage: "CA certificate (PEM) for Redis's TLS certificate; turns TLS on"},
		&cli.StringFlag{Name: "redis-cert-file", EnvVars: env("REDIS_CERT_FILE"), Usage: "client certificate (PEM) for Redis TLS; turns TLS on"},
		&cli.StringFlag{Name: "redis-key-file", EnvVars: env("REDIS_KEY_FILE"), Usage: "key (PEM) of --redis-cert-file"},
		&cli.IntFlag{Name: "redis-wait-replicas", EnvVars: env("REDIS_WAIT_REPLICAS"), Usage: "replicas that must have a submission or result before it counts as written (Redis WAIT; 0: off; not with --redis-cluster)"},
		&cli.DurationFlag{Name: "redis-wait-timeout", DefaultText: jobs.DefaultRedisWaitTimeout.String(), EnvVars: env("REDIS_WAIT_TIMEOUT"), Usage: "how long to wait for --redis-wait-replicas"},
		&cli.StringFlag{Name: "s3-endpoint", Value: defaultS3Endpoint, EnvVars: env("S3_ENDPOINT"), Usage: "S3 API host:port"},
		&cli.StringFlag{Name: "s3-public-endpoint", EnvVars: env("S3_PUBLIC_ENDPOINT"), Usage: "host:port written into presigned links (default: --s3-endpoint)"},
		&cli.BoolFlag{Name: "s3-secure", EnvVars: env("S3_SECURE"), Usage: "use https to reach S3"},
		&cli.StringFlag{Name: "s3-access-key", Value: defaultAccessKey, EnvVars: env("S3_ACCESS_KEY"), Usage: "S3 access key"},
		&cli.StringFlag{Name: "s3-secret-key", Value: defaultSecretKey, EnvVars: env("S3_SECRET_KEY"), Usage: "S3 secret key"},
		&cli.StringFlag{Name: "s3-bucket", Value: defaultBucket, EnvVars: env("S3_BUCKET"), Usage: "bucket for inputs, outputs and logs"},
		&cli.StringFlag{Name: "s3-region", DefaultText: quoted(storage.DefaultRegion), EnvVars: env("S3_REGION"), Usage: "S3 region (set, so presigning needs no request)"},
		&cli.StringFlag{Name: "queue", DefaultText: quoted(jobs.DefaultQueue), EnvVars: env("QUEUE"), Usage: "queue for jobs that name none"},
		&cli.DurationFlag{Name: "default-timeout", DefaultText: jobs.DefaultTimeout.String(), EnvVars: env("DEFAULT_TIMEOUT")},
		&cli.DurationFlag{Name: "max-timeout", DefaultText: jobs.DefaultMaxTimeout.String(), EnvVars: env("MAX_TIMEOUT")},
		&cli.StringFlag{Name: "default-memory", DefaultText: sizeText(jobs.DefaultMemory), EnvVars: env("DEFAULT_MEMORY")},
		&cli.StringFlag{Name: "max-memory", DefaultText: sizeText(jobs.DefaultMaxMemory), EnvVars: env("MAX_MEMORY")},
		&cli.StringFlag{Name: "default-disk", DefaultText: sizeText(jobs.DefaultDisk), EnvVars: env("DEFAULT_DISK")},
		&cli.StringFlag{Name: "max-disk", DefaultText: sizeText(jobs.DefaultMaxDisk), EnvVars: env("MAX_DISK")},
		&cli.StringFlag{Name: "default-output-size", DefaultText: sizeText(jobs.DefaultOutputSize), EnvVars: env("DEFAULT_OUTPUT_SIZE")},
		&cli.StringFlag{Name: "max-output-size", DefaultText: sizeText(jobs.DefaultMaxOutputSize), EnvVars: env("MAX_OUTPUT_SIZE")},
		&cli.IntFlag{Name: "default-output-files", DefaultText: intText(jobs.DefaultOutputFiles), EnvVars: env("DEFAULT_OUTPUT_FILES")},
		&cli.IntFlag{Name: "max-output-files", DefaultText: intText(jobs.DefaultMaxOutputFiles), EnvVars: env("MAX_OUTPUT_FILES")},
		&cli.StringFlag{Name: "default-cpus", DefaultText: strconv.FormatFloat(jobs.DefaultCPUs, 'g', -1, 64) + ", or --max-cpus when less", EnvVars: env("DEFAULT_CPUS"), Usage: "CPU limit of a job that asks for none, in cores"},
		&cli.StringFlag{Name: "max-cpus", DefaultText: "number of CPUs", EnvVars: env("MAX_CPUS"), Usage: "largest CPU limit, in cores; a worker's may not be over its host's CPUs"},
		&cli.IntFlag{Name: "max-inputs", DefaultText: intText(jobs.DefaultMaxInputs), EnvVars: env("MAX_INPUTS")},
		&cli.StringFlag{Name: "max-input-size", DefaultText: sizeText(jobs.DefaultMaxInputSize), EnvVars: env("MAX_INPUT_SIZE"), Usage: "largest input file"},
		&cli.StringFlag{Name: "max-inputs-size", DefaultText: sizeText(jobs.DefaultMaxInputsSize), EnvVars: env("MAX_INPUTS_SIZE"), Usage: "all inputs of a job together"},
		&cli.StringFlag{Name: "max-script-size", DefaultText: sizeText(jobs.DefaultMaxScriptSize), EnvVars: env("MAX_SCRIPT_SIZE")},
		&cli.IntFlag{Name: "max-retry", DefaultText: intText(jobs.DefaultMaxRetry), EnvVars: env("MAX_RETRY"), Usage: "retries of a job the system could not run"},
		&cli.DurationFlag{Name: "result-retention", DefaultText: jobs.DefaultResultRetention.String(), EnvVars: env("RESULT_RETENTION")},
		&cli.DurationFlag{Name: "link-expiry", DefaultText: jobs.DefaultLinkExpiry.String(), EnvVars: env("LINK_EXPIRY"), Usage: "life of presigned links (at most " + hours(storage.MaxLinkExpiry) + ")"},
		&cli.StringFlag{Name: "server", EnvVars: env("SERVER"), Usage: "API server URL: enqueue, status, wait, cancel and download go through it instead of Redis and S3"},
		&cli.StringFlag{Name: "token", EnvVars: env("TOKEN"), Usage: "API token, with --server"},
		&cli.StringFlag{Name: "log-level", Value: defaultLogLevel, EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error"},
	}
}

// workerFlags are `sandq worker`'s flags.
func workerFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.IntFlag{Name: "concurrency", DefaultText: "number of CPUs", EnvVars: env("CONCURRENCY"), Usage: "jobs run at once"},
		&cli.StringFlag{Name: "queues", DefaultText: quoted(formatQueues(jobs.DefaultQueues())), EnvVars: env("QUEUES"), Usage: "queues and priorities, q=n,..."},
		&cli.StringFlag{Name: "state-dir", DefaultText: quoted(executor.DefaultStateDir), EnvVars: env("STATE_DIR"), Usage: "sandbox scratch space and runsc state"},
	}
	flags = append(flags, sandboxFlags("STATE_DIR/images")...)
	return append(flags,
		&cli.StringSliceFlag{Name: "images", EnvVars: env("IMAGES"), Usage: "other images jobs on this worker's queues may name (comma-separated or repeated)"},
		&cli.StringFlag{Name: "log-size", DefaultText: sizeText(jobs.DefaultLogSize), EnvVars: env("LOG_SIZE"), Usage: "stored bytes of each of stdout and stderr"},
		&cli.StringFlag{Name: "live-output-size", DefaultText: sizeText(jobs.DefaultLiveOutputSize), EnvVars: env("LIVE_OUTPUT_SIZE"), Usage: "bytes of stdout and stderr together each attempt of a job streams live through Redis, kept as long as results; past it output is dropped and counted (0: off)"},
		&cli.StringFlag{Name: "max-result-size", DefaultText: sizeText(jobs.DefaultMaxResultBytes), EnvVars: env("MAX_RESULT_SIZE"), Usage: "largest result document (JSON); over it, lists are cut and kept whole in a manifest object (at least " + jobs.FormatSize(jobs.MinMaxResultBytes) + ")"},
		&cli.DurationFlag{Name: "task-check-interval", DefaultText: jobs.DefaultTaskCheckInterval.String(), EnvVars: env("TASK_CHECK_INTERVAL"), Usage: "how often an idle worker polls Redis for work"},
		&cli.IntFlag{Name: "warm-sandboxes", EnvVars: env("WARM_SANDBOXES"), Usage: "sandboxes kept created ahead of demand for jobs of the default image and limits without network (0: off); such jobs skip runsc create"},
		&cli.IntFlag{Name: "snapshot-pool", EnvVars: env("SNAPSHOT_POOL"), Usage: "with --snapshots, sandboxes per template kept restored ahead of demand for jobs of the default limits (0: off); such jobs skip runsc create and restore"},
		&cli.BoolFlag{Name: "snapshots", EnvVars: env("SNAPSHOTS"), Usage: "start python jobs of the default limits, networked or not, from a snapshot template of their image with its preload list already imported (made at start unless sandq image snapshot made it; kept beside the image)"},
		&cli.DurationFlag{Name: "shutdown-grace", DefaultText: jobs.DefaultShutdownGrace.String(), EnvVars: env("SHUTDOWN_GRACE"), Usage: "time running jobs get to finish on SIGTERM"},
		&cli.StringFlag{Name: "memory-budget", DefaultText: quoted(jobs.DefaultMemoryBudget.String()), EnvVars: env("MEMORY_BUDGET"),
			Usage: "most memory the running jobs' limits may add up to: a fraction of the host's memory (0.75), a percentage (75%) or a size (8GiB); over it, jobs wait"},
		&cli.StringFlag{Name: "egress-config", EnvVars: env("EGRESS_CONFIG"), Usage: "network policy file (JSON); without it no job gets network"},
		&cli.StringFlag{Name: "metrics-addr", Value: defaultMetricsAddr, EnvVars: env("METRICS_ADDR"), Usage: "where the worker serves Prometheus metrics at /metrics (empty: off)"},
		&cli.StringFlag{Name: "webhook-config", EnvVars: env("WEBHOOK_CONFIG"), Usage: "webhook settings file (JSON): secrets, default URLs, retries"},
	)
}

// sandboxFlags are the flags of the commands that run sandboxes (worker and
// bench): the runsc binary and platform, and the image directory (its
// default shown as imageDirDefault) and image. sandboxSettingsFromFlags
// reads them.
func sandboxFlags(imageDirDefault string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "runsc", DefaultText: quoted(executor.DefaultRunsc), EnvVars: env("RUNSC"), Usage: "runsc binary"},
		&cli.StringFlag{Name: "platform", DefaultText: quoted(executor.DefaultPlatform), EnvVars: env("PLATFORM"), Usage: "runsc platform"},
		&cli.StringFlag{Name: "image-dir", DefaultText: imageDirDefault, EnvVars: env("IMAGE_DIR"), Usage: "image directory"},
		&cli.StringFlag{Name: "image", DefaultText: quoted(jobs.DefaultImage), EnvVars: env("IMAGE"), Usage: "image jobs run on unless they name one"},
	}
}

// sandboxSettings are the values of sandboxFlags, empty where not set (for
// the command's config to default).
type sandboxSettings struct {
	runsc    executor.RunscConfig // Runsc and Platform
	imageDir string
	image    string
}

func sandboxSettingsFromFlags(c *cli.Context) sandboxSettings {
	return sandboxSettings{
		runsc:    executor.RunscConfig{Runsc: c.String("runsc"), Platform: c.String("platform")},
		imageDir: c.String("image-dir"),
		image:    c.String("image"),
	}
}

func newLogger(c *cli.Context) *slog.Logger { return newLoggerTo(c, os.Stderr) }

// newLoggerTo is newLogger writing to w.
func newLoggerTo(c *cli.Context, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// interruptible returns the command's context, ended by Ctrl-C or SIGTERM.
func interruptible(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
}

// loadConfig is the configuration of a command with the global flags only
// (producers, serve, dev, s3 setup): the flags set, defaulted and checked.
func loadConfig(c *cli.Context) (jobs.Config, error) {
	cfg, err := globalConfig(c)
	if err != nil {
		return cfg, err
	}
	cfg = cfg.WithDefaults()
	return cfg, cfg.Validate()
}

// loadWorkerConfig is loadConfig for `sandq worker`: the global flags and
// the worker's.
func loadWorkerConfig(c *cli.Context) (jobs.Config, error) {
	cfg, err := globalConfig(c)
	if err != nil {
		return cfg, err
	}
	if err := workerConfig(c, &cfg); err != nil {
		return cfg, err
	}
	cfg = cfg.WithDefaults()
	return cfg, cfg.Validate()
}

// globalConfig maps the global flags and their SANDQ_* variables onto
// jobs.Config. A flag not set leaves its field zero, for WithDefaults.
func globalConfig(c *cli.Context) (jobs.Config, error) {
	cfg := jobs.Config{
		RedisAddr: c.String("redis-addr"), RedisUsername: c.String("redis-username"),
		RedisPassword: c.String("redis-password"), RedisDB: c.Int("redis-db"),
		RedisURL:       c.String("redis-url"),
		RedisSentinels: splitList(c.StringSlice("redis-sentinels")), RedisMasterName: c.String("redis-master-name"),
		RedisSentinelUsername: c.String("redis-sentinel-username"), RedisSentinelPassword: c.String("redis-sentinel-password"),
		RedisCluster: splitList(c.StringSlice("redis-cluster")),
		RedisCAFile:  c.String("redis-ca-file"), RedisCertFile: c.String("redis-cert-file"), RedisKeyFile: c.String("redis-key-file"),
		RedisWaitReplicas: c.Int("redis-wait-replicas"), RedisWaitTimeout: c.Duration("redis-wait-timeout"),
		Storage: storage.Config{
			Endpoint: c.String("s3-endpoint"), PublicEndpoint: c.String("s3-public-endpoint"),
			AccessKey: c.String("s3-access-key"), SecretKey: c.String("s3-secret-key"),
			Bucket: c.String("s3-bucket"), Region: c.String("s3-region"), Secure: c.Bool("s3-secure"),
		},
		Queue:           c.String("queue"),
		MaxInputs:       c.Int("max-inputs"),
		ResultRetention: c.Duration("result-retention"),
		LinkExpiry:      c.Duration("link-expiry"),
	}
	// 0 retries is NoRetry; unset is the default.
	if c.IsSet("max-retry") {
		if cfg.MaxRetry = c.Int("max-retry"); cfg.MaxRetry == 0 {
			cfg.MaxRetry = jobs.NoRetry
		}
	}
	d, m := &cfg.DefaultLimits, &cfg.MaxLimits
	d.Timeout, m.Timeout = c.Duration("default-timeout"), c.Duration("max-timeout")
	d.OutputFiles, m.OutputFiles = c.Int("default-output-files"), c.Int("max-output-files")
	for _, f := range []struct {
		flag string
		dst  *float64
	}{{"default-cpus", &d.CPUs}, {"max-cpus", &m.CPUs}} {
		if c.IsSet(f.flag) {
			n, err := jobs.ParseCPUs(c.String(f.flag))
			if err != nil {
				return cfg, fmt.Errorf("--%s: %w", f.flag, err)
			}
			*f.dst = n
		}
	}
	return cfg, parseSizes(c, []sizeFlag{
		{"default-memory", &d.Memory}, {"max-memory", &m.Memory},
		{"default-disk", &d.Disk}, {"max-disk", &m.Disk},
		{"default-output-size", &d.OutputBytes}, {"max-output-size", &m.OutputBytes},
		{"max-input-size", &cfg.MaxInputBytes}, {"max-inputs-size", &cfg.MaxInputsTotal}, {"max-script-size", &cfg.MaxScriptBytes},
	})
}

// workerConfig maps the worker flags onto cfg, as globalConfig does.
func workerConfig(c *cli.Context, cfg *jobs.Config) error {
	if err := parseSizes(c, []sizeFlag{{"log-size", &cfg.Worker.LogBytes}, {"max-result-size", &cfg.MaxResultBytes}, {"live-output-size", &cfg.Worker.LiveOutputBytes}}); err != nil {
		return err
	}
	// 0 turns live output off; unset is the default.
	if c.IsSet("live-output-size") && cfg.Worker.LiveOutputBytes == 0 {
		cfg.Worker.LiveOutputBytes = jobs.NoLiveOutput
	}
	w := &cfg.Worker
	sb := sandboxSettingsFromFlags(c)
	w.Runsc, w.Platform, w.ImageDir, w.Image = sb.runsc.Runsc, sb.runsc.Platform, sb.imageDir, sb.image
	w.Concurrency = c.Int("concurrency")
	w.StateDir = c.String("state-dir")
	w.Images = append(w.Images, splitList(c.StringSlice("images"))...)
	w.ShutdownGrace = c.Duration("shutdown-grace")
	w.TaskCheckInterval = c.Duration("task-check-interval")
	w.WarmSandboxes = c.Int("warm-sandboxes")
	w.Snapshots = c.Bool("snapshots")
	w.SnapshotPool = c.Int("snapshot-pool")
	var err error
	if c.IsSet("queues") {
		if w.Queues, err = parseQueues(c.String("queues")); err != nil {
			return err
		}
	}
	if c.IsSet("memory-budget") {
		if w.MemoryBudget, err = jobs.ParseMemoryBudget(c.String("memory-budget")); err != nil {
			return fmt.Errorf("--memory-budget: %w", err)
		}
	}
	if path := c.String("egress-config"); path != "" {
		if cfg.Egress, err = jobs.LoadEgressConfig(path); err != nil {
			return err
		}
	}
	if path := c.String("webhook-config"); path != "" {
		if cfg.Webhook, err = jobs.LoadWebhookConfig(path); err != nil {
			return err
		}
	}
	return nil
}

// splitList flattens a list flag's values, each comma-separated or
// repeated, dropping empty entries.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}

// sizeFlag is a byte-size flag and the field it sets.
type sizeFlag struct {
	name string
	dst  *int64
}

// parseSizes parses the size flags that are set into their fields.
func parseSizes(c *cli.Context, flags []sizeFlag) error {
	for _, f := range flags {
		if !c.IsSet(f.name) {
			continue
		}
		v, err := jobs.ParseSize(c.String(f.name))
		if err != nil {
			return fmt.Errorf("--%s: %w", f.name, err)
		}
		*f.dst = v
	}
	return nil
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
		v := c.Value(name)
		if _, list := f.(*cli.StringSliceFlag); list {
			v = strings.Join(c.StringSlice(name), ",")
		}
		out = append(out, fmt.Sprintf("%s=%v", ev.GetEnvVars()[0], v))
	}
	return out
}

// parseQueues reads --queues: q=n,... (a queue without =n has priority 1).
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

// formatQueues writes queues as --queues takes them, sorted by name.
func formatQueues(queues map[string]int) string {
	var parts []string
	for q, p := range queues {
		parts = append(parts, fmt.Sprintf("%s=%d", q, p))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func newStore(cfg jobs.Config) (*storage.Store, error) {
	return storage.New(cfg.Storage)
}
