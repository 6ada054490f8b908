package jobs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/storage"
)

// Config is one process's configuration, producer or worker. Zero fields
// take the documented defaults in WithDefaults; Validate names what is wrong.
type Config struct {
	// Redis address host:port. Default DefaultRedisAddr, unless another
	// way of naming the Redis is given (RedisURL, RedisSentinels,
	// RedisCluster; see redisconn.go: only one may be).
	RedisAddr     string
	RedisUsername string
	RedisPassword string
	// RedisDB is the database number. Default 0.
	RedisDB int
	// RedisURL names the Redis by URL: redis://, rediss:// (TLS),
	// redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER[/db],
	// redis+cluster://[user:pass@]h1:p1,h2:p2 (and their rediss+ forms).
	RedisURL string
	// RedisSentinels are the Sentinels (host:port) of the primary named
	// RedisMasterName; RedisSentinelUsername and RedisSentinelPassword
	// are the Sentinels' own credentials, when they have some.
	RedisSentinels        []string
	RedisMasterName       string
	RedisSentinelUsername string
	RedisSentinelPassword string
	// RedisCluster are seed nodes (host:port) of a Redis Cluster.
	RedisCluster []string
	// RedisCAFile (PEM) replaces the system roots for Redis's TLS
	// certificate; RedisCertFile and RedisKeyFile are a client
	// certificate. Either file turns TLS on for RedisAddr, RedisSentinels
	// and RedisCluster; a URL turns it on with a rediss scheme.
	RedisCAFile   string
	RedisCertFile string
	RedisKeyFile  string
	// RedisWaitReplicas, when above 0, makes a submission and a result
	// count as written only once that many replicas have it (Redis WAIT),
	// so that a failover cannot lose it; RedisWaitTimeout bounds the wait
	// (default DefaultRedisWaitTimeout). Not with RedisCluster.
	RedisWaitReplicas int
	RedisWaitTimeout  time.Duration

	Storage storage.Config

	// Queue a job goes to when it names none. Default DefaultQueue.
	Queue string

	// DefaultLimits apply when a job asks for nothing; MaxLimits are the most
	// a job may ask for. Defaults: DefaultTimeout, DefaultMemory, ... and
	// DefaultMaxTimeout, DefaultMaxMemory, ... (defaults.go); the CPU
	// limit's maximum defaults to the host's CPUs (HostCPUs), and its
	// default to DefaultCPUs, or the maximum when that is less.
	DefaultLimits Limits
	MaxLimits     Limits

	// Input caps: inputs, bytes of each and of all, script bytes,
	// arguments and environment variables. Defaults: DefaultMaxInputs,
	// DefaultMaxInputSize, ... (defaults.go).
	MaxInputs      int
	MaxInputBytes  int64
	MaxInputsTotal int64
	MaxScriptBytes int64
	MaxArgs        int
	MaxArgBytes    int
	MaxEnv         int
	MaxEnvBytes    int

	// MaxRetry is how often a job that could not run (status error) is
	// retried. Default DefaultMaxRetry; NoRetry (-1) for none.
	MaxRetry int
	// ResultRetention keeps finished jobs and their results. Default
	// DefaultResultRetention.
	ResultRetention time.Duration
	// LinkExpiry is the life of presigned links. Default DefaultLinkExpiry;
	// at most storage.MaxLinkExpiry.
	LinkExpiry time.Duration
	// FinishAllowance is added to a job's timeout for download, upload and
	// result writing before asynq gives up on it. Default
	// DefaultFinishAllowance.
	FinishAllowance time.Duration
	// PollInterval is how often Wait and the API's event streams read a
	// job's state besides hearing the workers' completion messages
	// (keys.DoneChannel), which may be lost. Default DefaultPollInterval.
	PollInterval time.Duration
	// MaxResultBytes caps a result document's JSON (workers). Over it, the
	// whole lists go to a manifest object and the result's are cut (see
	// TrimmedDoc). Default DefaultMaxResultBytes; at least
	// MinMaxResultBytes.
	MaxResultBytes int64

	Worker WorkerConfig

	// Egress is the network policy. Workers enforce it and publish it for
	// their queues in Redis, where producers read it at enqueue.
	Egress EgressConfig

	// Webhook configures completion webhooks (workers).
	Webhook WebhookConfig
}

// WorkerConfig is the part only workers use.
type WorkerConfig struct {
	// Concurrency is how many jobs run at once. Default: number of CPUs.
	Concurrency int
	// Queues with priorities. Default DefaultQueues(): {"default": 1}.
	Queues map[string]int
	// StateDir holds sandbox scratch space and runsc state. Default
	// executor.DefaultStateDir.
	StateDir string
	// Runsc binary. Default executor.DefaultRunsc, on PATH.
	Runsc string
	// Platform for runsc. Default executor.DefaultPlatform.
	Platform string
	// ImageDir holds images, one directory each with a rootfs inside.
	// Default StateDir/images: image.DefaultDir with the default StateDir.
	ImageDir string
	// Image is the image jobs run on unless they name one. Default
	// DefaultImage.
	Image string
	// Images are the other images jobs on this worker's queues may name.
	Images []string
	// UID and GID of the job's process. Default image.DefaultUID and
	// image.DefaultGID: the images' user "sandbox".
	UID, GID uint32
	// Pids caps the tasks in one sandbox. Default DefaultPids.
	Pids int64
	// LogBytes caps each stored log stream. Default DefaultLogSize.
	LogBytes int64
	// LogTail is how much of each stream's end the result carries. Default
	// DefaultLogTail.
	LogTail int
	// LiveOutputBytes caps what each attempt of a job puts in its live
	// output stream in Redis (keys.LiveLog), stdout and stderr together;
	// past it, output is dropped and counted. Default
	// DefaultLiveOutputSize; NoLiveOutput turns live output off.
	LiveOutputBytes int64
	// ShutdownGrace is how long a stopping worker lets running jobs finish
	// before killing them and handing them back to the queue. Default
	// DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// TaskCheckInterval is how often an idle worker polls for work (asynq
	// sleeps half of it plus a random part of up to all of it). Default
	// DefaultTaskCheckInterval.
	TaskCheckInterval time.Duration
	// WarmSandboxes is how many sandboxes the worker keeps created ahead
	// of demand for jobs of the default shape (default image and limits,
	// no network): such a job skips runsc create. 0 (the default) turns
	// it off. See executor.WarmRunner.
	WarmSandboxes int
	// Snapshots has the worker start the python jobs that fit a snapshot
	// template of their image from it (see executor.SnapshotRunner): it
	// builds a template at start for each of its images that has a
	// preload list. Off by default.
	Snapshots bool
	// SnapshotPool is how many sandboxes restored from each template the
	// worker keeps ready for jobs of the default limits (see
	// executor.SnapshotRunner.StartPools): such a job has neither runsc
	// create nor restore on its path. 0 (the default) turns it off; it
	// needs Snapshots.
	SnapshotPool int
	// MemoryBudget caps the sum of the memory limits of the jobs running at
	// once; jobs over it wait. Default DefaultMemoryBudget (75% of the
	// host's memory). A worker whose MaxLimits.Memory is over it refuses to
	// start.
	MemoryBudget MemoryBudget
}

// WithDefaults returns a copy with every unset field defaulted (see
// defaults.go).
func (c Config) WithDefaults() Config {
	if c.RedisURL == "" && len(c.RedisSentinels) == 0 && len(c.RedisCluster) == 0 {
		setString(&c.RedisAddr, DefaultRedisAddr)
	}
	setDur(&c.RedisWaitTimeout, DefaultRedisWaitTimeout)
	c.Storage = c.Storage.WithDefaults()
	setString(&c.Queue, DefaultQueue)
	setLimits(&c.MaxLimits, Limits{Timeout: DefaultMaxTimeout, Memory: DefaultMaxMemory, Disk: DefaultMaxDisk, OutputBytes: DefaultMaxOutputSize, OutputFiles: DefaultMaxOutputFiles, CPUs: HostCPUs()})
	// Under a maximum of less than one CPU, the default is the maximum.
	setLimits(&c.DefaultLimits, Limits{Timeout: DefaultTimeout, Memory: DefaultMemory, Disk: DefaultDisk, OutputBytes: DefaultOutputSize, OutputFiles: DefaultOutputFiles, CPUs: min(DefaultCPUs, c.MaxLimits.CPUs)})
	setInt(&c.MaxInputs, DefaultMaxInputs)
	set64(&c.MaxInputBytes, DefaultMaxInputSize)
	set64(&c.MaxInputsTotal, DefaultMaxInputsSize)
	set64(&c.MaxScriptBytes, DefaultMaxScriptSize)
	setInt(&c.MaxArgs, DefaultMaxArgs)
	setInt(&c.MaxArgBytes, DefaultMaxArgBytes)
	setInt(&c.MaxEnv, DefaultMaxEnv)
	setInt(&c.MaxEnvBytes, DefaultMaxEnvBytes)
	setInt(&c.MaxRetry, DefaultMaxRetry)
	setDur(&c.ResultRetention, DefaultResultRetention)
	setDur(&c.LinkExpiry, DefaultLinkExpiry)
	setDur(&c.FinishAllowance, DefaultFinishAllowance)
	setDur(&c.PollInterval, DefaultPollInterval)
	set64(&c.MaxResultBytes, DefaultMaxResultBytes)
	w := &c.Worker
	setInt(&w.Concurrency, runtime.NumCPU())
	if len(w.Queues) == 0 {
		w.Queues = DefaultQueues()
	}
	setString(&w.StateDir, executor.DefaultStateDir)
	setString(&w.Runsc, executor.DefaultRunsc)
	setString(&w.Platform, executor.DefaultPlatform)
	setString(&w.ImageDir, filepath.Join(w.StateDir, "images"))
	setString(&w.Image, DefaultImage)
	if w.UID == 0 {
		w.UID = image.DefaultUID
	}
	if w.GID == 0 {
		w.GID = image.DefaultGID
	}
	set64(&w.Pids, DefaultPids)
	set64(&w.LogBytes, DefaultLogSize)
	setInt(&w.LogTail, DefaultLogTail)
	set64(&w.LiveOutputBytes, DefaultLiveOutputSize)
	setDur(&w.ShutdownGrace, DefaultShutdownGrace)
	setDur(&w.TaskCheckInterval, DefaultTaskCheckInterval)
	if w.MemoryBudget == (MemoryBudget{}) {
		w.MemoryBudget = DefaultMemoryBudget
	}
	c.Egress = c.Egress.WithDefaults()
	c.Webhook = c.Webhook.WithDefaults()
	return c
}

// Validate reports the first inconsistent setting.
func (c Config) Validate() error {
	if err := c.validateRedis(); err != nil {
		return err
	}
	if err := c.Storage.Validate(); err != nil {
		return err
	}
	if err := CheckQueue(c.Queue); err != nil {
		return fmt.Errorf("default queue: %w", err)
	}
	d, m := c.DefaultLimits, c.MaxLimits
	switch {
	case d.Timeout > m.Timeout:
		return fmt.Errorf("default timeout %s is over the maximum %s", d.Timeout, m.Timeout)
	case d.Memory > m.Memory:
		return fmt.Errorf("default memory %s is over the maximum %s", FormatSize(d.Memory), FormatSize(m.Memory))
	case d.Disk > m.Disk:
		return fmt.Errorf("default disk %s is over the maximum %s", FormatSize(d.Disk), FormatSize(m.Disk))
	case d.OutputBytes > m.OutputBytes:
		return fmt.Errorf("default output size %s is over the maximum %s", FormatSize(d.OutputBytes), FormatSize(m.OutputBytes))
	case d.OutputFiles > m.OutputFiles:
		return fmt.Errorf("default output files %d is over the maximum %d", d.OutputFiles, m.OutputFiles)
	case d.Memory < MinMemory || d.Disk < MinDisk || d.Timeout < time.Second:
		return errors.New("default limits are under the minimum (1s, 64MiB memory, 16MiB disk)")
	case c.LinkExpiry <= 0 || c.LinkExpiry > storage.MaxLinkExpiry:
		return fmt.Errorf("link expiry %s: must be between 1s and %s", c.LinkExpiry, storage.MaxLinkExpiry)
	case c.MaxResultBytes < MinMaxResultBytes:
		return fmt.Errorf("max result size %s: must be at least %s", FormatSize(c.MaxResultBytes), FormatSize(MinMaxResultBytes))
	case c.MaxRetry < NoRetry:
		return errors.New("max retry must not be negative")
	case d.OutputBytes < 4096:
		return errors.New("default output size is under the minimum of 4KiB")
	case c.Worker.Concurrency < 1:
		return errors.New("worker concurrency must be at least 1")
	case c.Worker.LogBytes < 1024 || c.Worker.LogTail < 0 || int64(c.Worker.LogTail) > c.Worker.LogBytes:
		return errors.New("worker log limits: log bytes at least 1KiB, tail between 0 and log bytes")
	case c.Worker.LiveOutputBytes < NoLiveOutput:
		return fmt.Errorf("live output size %d: want a size, or NoLiveOutput (%d) for none", c.Worker.LiveOutputBytes, NoLiveOutput)
	}
	for q, p := range c.Worker.Queues {
		if err := CheckQueue(q); err != nil {
			return fmt.Errorf("worker queues: %w", err)
		}
		if q == c.Webhook.Queue {
			return fmt.Errorf("worker queues: %s is the webhook delivery queue, served by its own server", q)
		}
		if p < 1 {
			return fmt.Errorf("worker queue %s: priority must be at least 1", q)
		}
	}
	if err := validateCPUs(d.CPUs, m.CPUs); err != nil {
		return err
	}
	if err := c.Worker.MemoryBudget.validate(); err != nil {
		return err
	}
	if c.Worker.WarmSandboxes < 0 || c.Worker.WarmSandboxes > executor.MaxWarm {
		return fmt.Errorf("warm sandboxes %d: want 0 (off) to %d", c.Worker.WarmSandboxes, executor.MaxWarm)
	}
	if c.Worker.SnapshotPool < 0 || c.Worker.SnapshotPool > executor.MaxSnapshotPool {
		return fmt.Errorf("snapshot pool %d: want 0 (off) to %d", c.Worker.SnapshotPool, executor.MaxSnapshotPool)
	}
	if c.Worker.SnapshotPool > 0 && !c.Worker.Snapshots {
		return errors.New("a snapshot pool needs snapshots (--snapshots)")
	}
	if c.Worker.TaskCheckInterval < time.Millisecond || c.Worker.TaskCheckInterval > time.Minute {
		return fmt.Errorf("task check interval %s: want 1ms to 1m", c.Worker.TaskCheckInterval)
	}
	for _, name := range append([]string{c.Worker.Image}, c.Worker.Images...) {
		if err := CheckImageName(name); err != nil {
			return err
		}
	}
	if err := c.Webhook.Validate(); err != nil {
		return err
	}
	return c.Egress.Validate()
}

// NoRetry as Config.MaxRetry means a job that could not run is not retried.
const NoRetry = -1

// NoLiveOutput as WorkerConfig.LiveOutputBytes turns live output off: no
// job's output goes to Redis while it runs.
const NoLiveOutput = -1

// CheckImageName refuses an image name that is not a plain name.
func CheckImageName(name string) error {
	if err := CheckName("image", name); err != nil || filepath.Base(name) != name || strings.HasPrefix(name, ".") {
		return &FieldError{Field: "image", Msg: fmt.Sprintf("%q is not an image name (letters, digits, . _ -; no /)", name)}
	}
	return nil
}

// ImagePath is the root filesystem of the configured image.
func (c Config) ImagePath() string {
	return filepath.Join(c.Worker.ImageDir, c.Worker.Image, "rootfs")
}

// RunscConfig is the sandbox runner's configuration for this worker
// config: its runsc, platform and state directory, and, with network,
// job networks from the egress policy's address pool.
func (c Config) RunscConfig(logger *slog.Logger, network bool) (executor.RunscConfig, error) {
	rc := executor.RunscConfig{Runsc: c.Worker.Runsc, Platform: c.Worker.Platform, StateDir: c.Worker.StateDir, Logger: logger}
	if network {
		pool, err := netip.ParsePrefix(c.Egress.Pool)
		if err != nil {
			return rc, fmt.Errorf("egress pool: %w", err)
		}
		rc.Network = &executor.NetworkConfig{Pool: pool}
	}
	return rc, nil
}

// setLimits sets each zero field of l to def's.
func setLimits(l *Limits, def Limits) {
	setDur(&l.Timeout, def.Timeout)
	set64(&l.Memory, def.Memory)
	set64(&l.Disk, def.Disk)
	set64(&l.OutputBytes, def.OutputBytes)
	setInt(&l.OutputFiles, def.OutputFiles)
	if l.CPUs == 0 {
		l.CPUs = def.CPUs
	}
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDur(p *time.Duration, v time.Duration) {
	if *p == 0 {
		*p = v
	}
}

func set64(p *int64, v int64) {
	if *p == 0 {
		*p = v
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}
