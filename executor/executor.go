// Package executor runs one job in a fresh gVisor sandbox and collects what
// it leaves behind.
//
// A Runner prepares a Sandbox (scratch directories, a size-capped outputs
// filesystem); the caller fills its inputs and job directories; Run starts a
// new runsc container, enforces the limits and waits for it; Outputs lists the
// regular files it wrote, once the container is gone; Release tears everything
// down, also after a cancellation.
//
// RunscRunner is the Runner that runs each sandbox in gVisor; WarmRunner wraps
// it with a pool of sandboxes created ahead of their jobs.
package executor

import (
	"context"
	"errors"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
)

// Paths inside every sandbox.
const (
	InputsMount  = "/mnt/inputs"
	OutputsMount = "/mnt/outputs"
	JobMount     = "/mnt/job"
	WorkDir      = "/work"
)

// Limits bound one sandbox.
type Limits struct {
	// Timeout is the wall-clock time from start to kill.
	Timeout time.Duration
	// Memory is the sandbox's cgroup memory limit, in bytes.
	Memory int64
	// CPUs caps the CPU time of the sandbox's cgroup: CPUs × CPUPeriodMicros
	// in each CPUPeriodMicros (0.5 is half a core, 2 two cores); 0 for no
	// limit. It is set when the job starts, whatever kind of sandbox runs
	// it, so warm and restored sandboxes take any job's.
	CPUs float64
	// Disk caps the overlay file store that holds every write to the root
	// filesystem (a file in the sandbox's scratch directory), in bytes.
	Disk int64
	// OutputBytes caps the outputs filesystem, in bytes.
	OutputBytes int64
	// OutputFiles caps the entries (files and directories) in the outputs
	// filesystem.
	OutputFiles int
	// Pids caps the tasks in the sandbox's cgroup.
	Pids int64
	// LogBytes caps each of stdout and stderr as stored; the rest is
	// counted and dropped from the middle.
	LogBytes int64
	// LogTail is how many of the last bytes of each stream the outcome
	// carries for the result document.
	LogTail int
}

// Spec is what runs in a sandbox.
type Spec struct {
	// Name labels the sandbox in logs (the job ID).
	Name string
	// Image is the root filesystem directory, shared read-only.
	Image string
	// Args is the process's argv; Args[0] is an absolute path in the image.
	Args []string
	// Env is the process's whole environment, KEY=value.
	Env []string
	// UID and GID the process runs as.
	UID, GID uint32
	Limits   Limits
	// Egress, when set, gives the sandbox a network whose only reachable
	// address is a proxy that lets through these hosts and ports. Without
	// it the sandbox has no network at all.
	Egress *Egress
}

// Egress is what a sandbox may reach through its proxy.
type Egress struct {
	Policy egress.Policy
	Limits egress.Limits
}

// Outcome is how a sandbox ended.
type Outcome struct {
	// ExitCode is the process's exit status; nil when it was killed by a
	// signal, including by a timeout or a cancellation.
	ExitCode *int
	// Signal is the signal that ended the process, if any.
	Signal string
	// TimedOut is set when the wall-clock limit killed the sandbox.
	TimedOut bool
	// OOMKilled is set when the memory limit killed the sandbox.
	OOMKilled bool
	// TaskLimited is set when the sandbox died without an exit status after
	// the job hit its tasks (pids) limit: gVisor cannot make the host
	// threads it needs then, and a fork bomb takes the sandbox down.
	TaskLimited bool
	// Interrupted is the cause of the context cancellation that killed the
	// sandbox, nil otherwise.
	Interrupted error
	Stdout      LogSummary
	Stderr      LogSummary
	// Egress is the proxy's audit of the job's requests, for networked
	// sandboxes.
	Egress *egress.Audit
	// Bypass counts what a networked sandbox sent around its proxy, which
	// the firewall refused; nil when it could not be read.
	Bypass *jobnet.Bypass
	// CreatedAt is when set-up of the container began (for a warm
	// sandbox: when its job took it), StartedAt when the job's process was
	// started, FinishedAt when the container was gone.
	CreatedAt, StartedAt, FinishedAt time.Time
	// Warm is set when the container was created ahead of its job by a
	// WarmRunner.
	Warm bool
	// StartMode is how the container came to run the job: StartCold,
	// StartWarm or StartRestored (from a snapshot template).
	StartMode string
	// CPUSeconds is the CPU time the sandbox's cgroup used from the job's
	// start until it ended (the job's processes and gVisor's kernel
	// serving them; not the container's creation or restore before),
	// read from the cgroup just before the container is deleted; nil when
	// it could not be read.
	CPUSeconds *float64
}

// Runner makes sandboxes.
type Runner interface {
	// Prepare makes a sandbox's scratch space. The caller must Release it.
	Prepare(ctx context.Context, spec Spec) (Sandbox, error)
}

// Sandbox is one fresh container for one job, used once.
type Sandbox interface {
	// ID is the container's ID.
	ID() string
	// InputsDir is the host directory mounted read-only at InputsMount.
	InputsDir() string
	// JobDir is the host directory mounted read-only at JobMount.
	JobDir() string
	// Create creates the container without starting it; it may run while
	// the caller fills JobDir and InputsDir, whose contents the job sees as
	// they are when Run starts it. Calling it is optional.
	Create(ctx context.Context) error
	// Follow has the sandbox hand out what it writes to stdout and stderr
	// from now on, as it is read, to out as well as to its logs; nil
	// stops it. Call it before Run: a warm or restored sandbox's pipes
	// exist before its job is known, so the job's sink cannot come with
	// its Spec. The Outcome's logs are the same with or without it.
	Follow(out LiveOutput)
	// Run starts the container (creating it first if Create was not
	// called), waits for it and removes it. Cancelling ctx kills it; the
	// cause is reported in Outcome.Interrupted.
	Run(ctx context.Context) (*Outcome, error)
	// Outputs lists what the job wrote, after Run.
	Outputs() (*Collection, error)
	// Release removes the container, mounts and scratch space.
	Release(ctx context.Context) error
}

// ErrSandbox marks failures of the sandbox machinery itself (as opposed to
// the job's own failures), which are worth a retry.
var ErrSandbox = errors.New("sandbox failure")
