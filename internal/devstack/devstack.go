// Package devstack runs the services sandq needs — Redis and MinIO — as
// child processes with all their data under one directory, and programs
// beside them (Run) such as a sandq worker. `sandq dev` (see sandqdev), the
// end-to-end tests and the benchmark use it; production runs them as real
// services.
//
// Each process is stopped in reverse order of starting, by a cleanup
// stack (internal/cleanup): Stop stops what Start and Run made, and a
// Start that fails stops what it had started.
package devstack

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sandq/sandq/internal/cleanup"
)

// Options say where the services listen and keep their data.
type Options struct {
	// Dir holds redis/ and minio/ data and, in logs/, each process's log.
	Dir string
	// Host is the address Redis and MinIO listen on (a bridge's address,
	// for clients in other network namespaces). Default DefaultHost.
	Host string
	// Ports on Host; 0 picks a free one.
	RedisPort, MinioPort, MinioConsolePort int
	// MinIO root credentials: hand them to no worker or API server;
	// ProvisionBucket makes least-privilege ones.
	AccessKey, SecretKey string
	// AppendOnly turns on Redis's AOF persistence (as production runs it).
	AppendOnly bool
	Logger     *slog.Logger
}

// DefaultHost is where the services listen unless Options.Host says
// otherwise: loopback only.
const DefaultHost = "127.0.0.1"

// StopTimeout is how long a service gets to exit after SIGTERM before it
// is killed, unless its Program says otherwise.
const StopTimeout = 10 * time.Second

// readyTimeout is how long Start waits for a service to answer.
const readyTimeout = 60 * time.Second

// Stack is a running set of services, and the programs run beside them.
type Stack struct {
	RedisAddr, MinioAddr, MinioConsoleAddr string
	Dir                                    string
	mu                                     sync.Mutex
	procs                                  []*proc
	// stops stops each process, last started first.
	stops  cleanup.Stack
	logger *slog.Logger
	// MinIO's root credentials: for bootstrap (ProvisionBucket) only.
	rootKey, rootSecret string
}

// Program is a process run beside the services (Run): it gets the
// services' lifetime, in its own process group, and is stopped (SIGTERM,
// then SIGKILL after StopTimeout) before them.
type Program struct {
	// Name names it in errors, and its log Dir/logs/NAME.log unless Log
	// names another file there.
	Name, Log string
	// Path and Args run it; Env is added to this process's environment.
	Path string
	Args []string
	Env  []string
	// StopTimeout is how long it gets to exit after SIGTERM. Default
	// StopTimeout.
	StopTimeout time.Duration
	// Unwatched: Wait does not end when it exits.
	Unwatched bool
}

func (p Program) withDefaults() Program {
	if p.Log == "" {
		p.Log = p.Name + ".log"
	}
	if p.StopTimeout == 0 {
		p.StopTimeout = StopTimeout
	}
	return p
}

type proc struct {
	Program
	cmd  *exec.Cmd
	done chan struct{}
	// err is how the process ended; set before done is closed.
	err error
	// watched: Wait returns when it exits (a Program, not a service).
	watched bool
}

// Start starts Redis and MinIO and waits until both answer. On error,
// nothing it started is left running.
func Start(ctx context.Context, o Options) (_ *Stack, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found: %w; install it with scripts/install-deps.sh", err)
	}
	minioBin, err := exec.LookPath("minio")
	if err != nil {
		return nil, fmt.Errorf("minio not found: %w; install it with scripts/install-deps.sh", err)
	}
	if o.Host == "" {
		o.Host = DefaultHost
	}
	if net.ParseIP(o.Host) == nil {
		return nil, fmt.Errorf("devstack host %q: want an IP address", o.Host)
	}
	for _, p := range []*int{&o.RedisPort, &o.MinioPort, &o.MinioConsolePort} {
		if *p == 0 {
			if *p, err = freePort(o.Host); err != nil {
				return nil, err
			}
		}
	}
	s := &Stack{
		Dir:              o.Dir,
		RedisAddr:        net.JoinHostPort(o.Host, strconv.Itoa(o.RedisPort)),
		MinioAddr:        net.JoinHostPort(o.Host, strconv.Itoa(o.MinioPort)),
		MinioConsoleAddr: net.JoinHostPort(o.Host, strconv.Itoa(o.MinioConsolePort)),
		logger:           o.Logger,
		rootKey:          o.AccessKey,
		rootSecret:       o.SecretKey,
	}
	defer s.stops.ReleaseOnError(ctx, &err)
	for _, d := range []string{"redis", "minio", "logs"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	aof := "no"
	if o.AppendOnly {
		aof = "yes"
	}
	if err := s.start(Program{Name: "redis", Path: redisBin, Args: []string{
		"--bind", o.Host, "--port", strconv.Itoa(o.RedisPort), "--dir", filepath.Join(o.Dir, "redis"),
		"--appendonly", aof, "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
		"--protected-mode", protectedMode(o.Host)}}, false); err != nil {
		return nil, err
	}
	if err := s.start(Program{Name: "minio", Path: minioBin,
		Env:  []string{"MINIO_ROOT_USER=" + o.AccessKey, "MINIO_ROOT_PASSWORD=" + o.SecretKey, "MINIO_UPDATE=off", "MINIO_BROWSER=on"},
		Args: []string{"server", filepath.Join(o.Dir, "minio"), "--address", s.MinioAddr, "--console-address", s.MinioConsoleAddr, "--quiet"}}, false); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, "redis"); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, "minio"); err != nil {
		return nil, err
	}
	return s, nil
}

// Run starts p beside the services; it is stopped before them, in reverse
// order of Run. Wait returns when it exits, unless it is Unwatched. It
// returns p's process ID.
func (s *Stack) Run(p Program) (pid int, err error) {
	if err := s.start(p, !p.Unwatched); err != nil {
		return 0, err
	}
	return s.PID(p.Name), nil
}

// Wait returns nil when ctx ends, or an error naming the program and its
// log when a program started with Run exits first. It stops nothing: Stop
// does.
func (s *Stack) Wait(ctx context.Context) error {
	s.mu.Lock()
	var watched []*proc
	for _, p := range s.procs {
		if p.watched {
			watched = append(watched, p)
		}
	}
	s.mu.Unlock()
	exited := make(chan *proc, len(watched))
	stop := make(chan struct{})
	defer close(stop)
	for _, p := range watched {
		go func() {
			select {
			case <-p.done:
				exited <- p
			case <-stop:
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case p := <-exited:
		return fmt.Errorf("%s exited (%v); see %s", p.Name, p.err, s.logPath(p.Program))
	}
}

// Stop stops every process, programs and services, last started first:
// SIGTERM, then SIGKILL after its stop timeout. Later calls do nothing.
func (s *Stack) Stop() error { return s.stops.Release(context.Background()) }

func (s *Stack) logPath(p Program) string { return filepath.Join(s.Dir, "logs", p.Log) }

// start starts p, or starts again the stopped process of p's name
// (StartService). The first start of a name adds its stop to the stack.
func (s *Stack) start(p Program, watched bool) error {
	p = p.withDefaults()
	logf, err := os.OpenFile(s.logPath(p), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C on the terminal reaches the parent only,
	// which stops children in order. Pdeathsig stops them if it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	pr := &proc{Program: p, cmd: cmd, done: make(chan struct{}), watched: watched}
	go func() { pr.err = cmd.Wait(); logf.Close(); close(pr.done) }()
	s.mu.Lock()
	replaced := false
	for i, q := range s.procs {
		if q.Name == p.Name {
			s.procs[i], replaced = pr, true
		}
	}
	if !replaced {
		s.procs = append(s.procs, pr)
	}
	s.mu.Unlock()
	if !replaced {
		s.stops.Add(p.Name, func(context.Context) error { return s.stop(p.Name, syscall.SIGTERM) })
	}
	s.logger.Debug("started", "service", p.Name, "pid", cmd.Process.Pid)
	return nil
}

// waitReady waits until the service name answers, for at most readyTimeout.
func (s *Stack) waitReady(ctx context.Context, name string) error {
	check := func() error { return pingRedis(s.RedisAddr) }
	if name == "minio" {
		check = func() error { return minioReady(s.MinioAddr) }
	}
	p := s.proc(name)
	deadline := time.Now().Add(readyTimeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited at start; see %s", name, s.logPath(p.Program))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %.0fs: %w", name, readyTimeout.Seconds(), err)
		}
	}
}

// PID is the process ID of a service ("redis" or "minio") or program, 0 if
// not running.
func (s *Stack) PID(name string) int {
	p := s.proc(name)
	if p == nil {
		return 0
	}
	select {
	case <-p.done:
		return 0
	default:
		return p.cmd.Process.Pid
	}
}

// StopService stops one service ("redis" or "minio") by sending sig to its
// process and waiting for it to exit (SIGKILL after 10s). Its data stays;
// StartService starts it again. Fault-injection tests use it.
func (s *Stack) StopService(name string, sig syscall.Signal) error {
	if s.proc(name) == nil {
		return fmt.Errorf("no service %q", name)
	}
	return s.stop(name, sig)
}

// stop sends sig to the process of name, if it runs, and waits for it to
// exit, killing it after its stop timeout.
func (s *Stack) stop(name string, sig syscall.Signal) error {
	p := s.proc(name)
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(p.StopTimeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop in %s; killed", name, p.StopTimeout)
	}
}

// StartService starts a service stopped by StopService again, on the same
// port with the same data directory, and waits until it answers.
func (s *Stack) StartService(ctx context.Context, name string) error {
	p := s.proc(name)
	if p == nil {
		return fmt.Errorf("no service %q", name)
	}
	select {
	case <-p.done:
	default:
		return fmt.Errorf("%s is running (pid %d)", name, p.cmd.Process.Pid)
	}
	if err := s.start(p.Program, p.watched); err != nil {
		return err
	}
	return s.waitReady(ctx, name)
}

func (s *Stack) proc(name string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// protectedMode is Redis's protected-mode setting for a server on host:
// on loopback, yes; on another address (a test bridge, where the clients
// are in other network namespaces) no, as protected mode without a
// password refuses every client not on loopback.
func protectedMode(host string) string {
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
		return "no"
	}
	return "yes"
}

// freePort is a TCP port on host that nothing listened on a moment ago.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redis answered %q", strings.TrimSpace(line))
	}
	return nil
}

func minioReady(addr string) error {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/minio/health/ready")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("minio health: %s", resp.Status)
	}
	return nil
}
