package jobs

import "time"

// Defaults of Config: what Config.WithDefaults gives a field left zero.
// Each is written here only; the flags of `sandq` show them in their help.
// (DefaultMaxResultBytes and DefaultMemoryBudget sit beside the caps they
// default.)
const (
	// DefaultRedisAddr is the Redis of `sandq dev`.
	DefaultRedisAddr = "127.0.0.1:6379"
	// DefaultRedisWaitTimeout bounds how long a submission or a result
	// waits for replicas to have it (Config.RedisWaitReplicas).
	DefaultRedisWaitTimeout = 2 * time.Second
	// DefaultQueue takes the jobs that name no queue, and is the queue a
	// worker serves unless told otherwise.
	DefaultQueue = "default"
)

// Defaults of Config.DefaultLimits: what a job that asks for nothing gets.
const (
	DefaultTimeout     = 5 * time.Minute
	DefaultMemory      = 2 << 30
	DefaultDisk        = 2 << 30
	DefaultOutputSize  = 512 << 20
	DefaultOutputFiles = 1000
	// DefaultCPUs is one core: with the worker's concurrency defaulting
	// to the host's CPUs, as many jobs as cores each get one.
	DefaultCPUs = 1.0
)

// Defaults of Config.MaxLimits: the most a job may ask for. The CPU
// limit's is the host's CPUs (HostCPUs).
const (
	DefaultMaxTimeout     = time.Hour
	DefaultMaxMemory      = 8 << 30
	DefaultMaxDisk        = 10 << 30
	DefaultMaxOutputSize  = 2 << 30
	DefaultMaxOutputFiles = 10000
)

// Defaults of the input caps: a job's inputs, script, arguments and
// environment.
const (
	DefaultMaxInputs     = 100
	DefaultMaxInputSize  = 1 << 30
	DefaultMaxInputsSize = 4 << 30
	DefaultMaxScriptSize = 1 << 20
	DefaultMaxArgs       = 256
	DefaultMaxArgBytes   = 64 << 10
	DefaultMaxEnv        = 128
	DefaultMaxEnvBytes   = 64 << 10
)

// Defaults of retries, retention and timing.
const (
	DefaultMaxRetry        = 3
	DefaultResultRetention = 7 * 24 * time.Hour
	DefaultLinkExpiry      = 24 * time.Hour
	DefaultFinishAllowance = 15 * time.Minute
	DefaultPollInterval    = 200 * time.Millisecond
)

// Webhook settings (WebhookConfig): deliveries wait in WebhookQueue, run
// DefaultWebhookConcurrency at once per worker; attempts and timeout
// default to package webhook's DefaultGiveUpAfter and DefaultTimeout.
const (
	WebhookQueue              = "webhooks"
	DefaultWebhookConcurrency = 16
)

// Defaults of WorkerConfig. Concurrency defaults to the number of CPUs,
// Queues to DefaultQueues(), StateDir, Runsc and Platform to executor's
// DefaultStateDir, DefaultRunsc and DefaultPlatform, and ImageDir to
// StateDir/images (with the default StateDir, image.DefaultDir).
const (
	// DefaultImage is the image jobs run on unless they name one.
	DefaultImage = "default"
	// DefaultPids caps the tasks in one sandbox.
	DefaultPids = 1024
	// DefaultLogSize caps each stored log stream; DefaultLogTail is how
	// much of its end the result carries.
	DefaultLogSize = 16 << 20
	DefaultLogTail = 8 << 10
	// DefaultLiveOutputSize caps the live output of each attempt of a job
	// (stdout and stderr together) in its Redis stream.
	DefaultLiveOutputSize = 1 << 20
	// DefaultShutdownGrace is how long a stopping worker lets running jobs
	// finish.
	DefaultShutdownGrace = 30 * time.Second
	// DefaultTaskCheckInterval: about 400 to 500 cheap Redis calls a
	// second per idle worker (its job and webhook servers), for a job's
	// wait in the queue of 5 to 15 ms instead of 50 to 150 (measured in
	// docs/performance.md, "The task check interval").
	DefaultTaskCheckInterval = 10 * time.Millisecond
)

// DefaultQueues returns WorkerConfig.Queues' default: DefaultQueue at
// priority 1.
func DefaultQueues() map[string]int { return map[string]int{DefaultQueue: 1} }
