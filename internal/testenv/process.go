package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a child process of the tests (a sandq worker, server or dev
// stack, a service): its stdout and stderr go to a log file, it runs in a
// process group of its own (a terminal's Ctrl-C reaches the test binary
// only, which stops its children in order) and gets SIGTERM if the test
// binary dies. It is signalled by its own PID only: other tests on the
// machine run the same programs.
type Process struct {
	Cmd     *exec.Cmd
	LogPath string
	exited  chan struct{}
	err     error
}

// StartProcess starts cmd with its output appended to logPath (what of
// cmd.Stdout and cmd.Stderr is not set already), in a process group of its
// own, sent SIGTERM if the test process dies (unless cmd.SysProcAttr says
// otherwise).
func StartProcess(cmd *exec.Cmd, logPath string) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	if cmd.Stderr == nil {
		cmd.Stderr = logf
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{Cmd: cmd, LogPath: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// Start is StartProcess for a test: the process is stopped (SIGTERM, then
// SIGKILL after a minute) when the test ends, if it still runs.
func Start(t testing.TB, cmd *exec.Cmd, logPath string) *Process {
	t.Helper()
	p, err := StartProcess(cmd, logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Minute) })
	return p
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Output is what it wrote so far.
func (p *Process) Output() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Exited is closed when the process has exited; Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is how the process exited (nil: status 0); valid after Exited.
func (p *Process) Err() error { return p.err }

// Alive reports whether it still runs.
func (p *Process) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the process, by its PID, if it still runs.
func (p *Process) Signal(sig syscall.Signal) error {
	if !p.Alive() {
		return errors.New("process already exited")
	}
	return syscall.Kill(p.Pid(), sig)
}

// Stop sends SIGTERM and waits up to d, then SIGKILLs it and waits for
// it. It reports whether the process exited by itself (or had already).
func (p *Process) Stop(d time.Duration) bool {
	if !p.Alive() {
		return true
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		p.Signal(syscall.SIGKILL)
		<-p.exited
		return false
	}
}

// WaitOutput waits up to d until the process has written want, and
// returns its output. It fails when the process exits first or the time
// runs out; either error holds the output.
func (p *Process) WaitOutput(want string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		out := p.Output()
		if strings.Contains(out, want) {
			return out, nil
		}
		select {
		case <-p.exited:
			if out = p.Output(); strings.Contains(out, want) {
				return out, nil
			}
			return out, fmt.Errorf("%s exited (%v) before it wrote %q:\n%s", filepath.Base(p.Cmd.Path), p.err, want, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("%s did not write %q in %s:\n%s", filepath.Base(p.Cmd.Path), want, d, out)
		}
	}
}
