// Package devstack runs the services sandq needs — Redis and MinIO — as
// child processes with all their data under one directory. `sandq dev` and
// the end-to-end tests use it; production runs them as real services.
package devstack

import (
	"bufio"
	"context"
	"errors"
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
)

// Options say where the services listen and keep their data.
type Options struct {
	// Dir holds redis/ and minio/ data and the services' logs.
	Dir string
	// Ports on 127.0.0.1; 0 picks a free one.
	RedisPort, MinioPort, MinioConsolePort int
	// MinIO root credentials: hand them to no worker or API server;
	// ProvisionBucket makes least-privilege ones.
	AccessKey, SecretKey string
	// AppendOnly turns on Redis's AOF persistence (as production runs it).
	AppendOnly bool
	Logger     *slog.Logger
}

// Stack is a running set of services.
type Stack struct {
	RedisAddr, MinioAddr, MinioConsoleAddr string
	Dir                                    string
	mu                                     sync.Mutex
	procs                                  []*proc
	logger                                 *slog.Logger
	// MinIO's root credentials: for bootstrap (ProvisionBucket) only.
	rootKey, rootSecret string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	// bin, env and args start it again (StartService).
	bin  string
	env  []string
	args []string
}

// Start starts Redis and MinIO and waits until both answer.
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
	for _, p := range []*int{&o.RedisPort, &o.MinioPort, &o.MinioConsolePort} {
		if *p == 0 {
			if *p, err = freePort(); err != nil {
				return nil, err
			}
		}
	}
	s := &Stack{
		Dir:              o.Dir,
		RedisAddr:        net.JoinHostPort("127.0.0.1", strconv.Itoa(o.RedisPort)),
		MinioAddr:        net.JoinHostPort("127.0.0.1", strconv.Itoa(o.MinioPort)),
		MinioConsoleAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.MinioConsolePort)),
		logger:           o.Logger,
		rootKey:          o.AccessKey,
		rootSecret:       o.SecretKey,
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	for _, d := range []string{"redis", "minio", "logs"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	aof := "no"
	if o.AppendOnly {
		aof = "yes"
	}
	if err := s.spawn("redis", redisBin, nil,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(o.RedisPort), "--dir", filepath.Join(o.Dir, "redis"),
		"--appendonly", aof, "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
		"--protected-mode", "yes"); err != nil {
		return nil, err
	}
	env := []string{"MINIO_ROOT_USER=" + o.AccessKey, "MINIO_ROOT_PASSWORD=" + o.SecretKey, "MINIO_UPDATE=off", "MINIO_BROWSER=on"}
	if err := s.spawn("minio", minioBin, env,
		"server", filepath.Join(o.Dir, "minio"), "--address", s.MinioAddr, "--console-address", s.MinioConsoleAddr, "--quiet"); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, "redis", func() error { return pingRedis(s.RedisAddr) }); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, "minio", func() error { return minioReady(s.MinioAddr) }); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Stack) spawn(name, bin string, env []string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, "logs", name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C on the terminal reaches the parent only,
	// which stops children in order. Pdeathsig stops them if it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), bin: bin, env: env, args: args}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	s.mu.Lock()
	replaced := false
	for i, q := range s.procs {
		if q.name == name {
			s.procs[i], replaced = p, true
		}
	}
	if !replaced {
		s.procs = append(s.procs, p)
	}
	s.mu.Unlock()
	s.logger.Debug("started", "service", name, "pid", cmd.Process.Pid)
	return nil
}

func (s *Stack) waitReady(ctx context.Context, name string, check func() error) error {
	deadline := time.Now().Add(60 * time.Second)
	var p *proc
	s.mu.Lock()
	for _, q := range s.procs {
		if q.name == name {
			p = q
		}
	}
	s.mu.Unlock()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited at start; see %s", name, filepath.Join(s.Dir, "logs", name+".log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 60s: %w", name, err)
		}
	}
}

// PID is the process ID of a service ("redis" or "minio"), 0 if not running.
func (s *Stack) PID(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.name == name {
			select {
			case <-p.done:
				return 0
			default:
				return p.cmd.Process.Pid
			}
		}
	}
	return 0
}

// StopService stops one service ("redis" or "minio") by sending sig to its
// process and waiting for it to exit (SIGKILL after 10s). Its data stays;
// StartService starts it again. Fault-injection tests use it.
func (s *Stack) StopService(name string, sig syscall.Signal) error {
	p := s.proc(name)
	if p == nil {
		return fmt.Errorf("no service %q", name)
	}
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
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop in 10s; killed", name)
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
	if err := s.spawn(name, p.bin, p.env, p.args...); err != nil {
		return err
	}
	check := func() error { return pingRedis(s.RedisAddr) }
	if name == "minio" {
		check = func() error { return minioReady(s.MinioAddr) }
	}
	return s.waitReady(ctx, name, check)
}

func (s *Stack) proc(name string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// Stop stops the services, last started first: SIGTERM, then SIGKILL after 10s.
func (s *Stack) Stop() error {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
			errs = append(errs, fmt.Errorf("%s did not stop in 10s; killed", p.name))
		}
	}
	return errors.Join(errs...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
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
