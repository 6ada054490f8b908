package devstack

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// program is a shell program that, on SIGTERM, appends its name and
// whether Redis still answers to the file log, then exits.
func program(name, redisPort, log string) Program {
	script := `trap 'if exec 3<>/dev/tcp/127.0.0.1/` + redisPort + ` && printf "PING\r\n" >&3 && read -t 2 r <&3; then up=$r; else up=down; fi; echo "` + name + ` ${up%?}" >> ` + log + `; exit 0' TERM
while :; do sleep 0.05; done`
	return Program{Name: name, Path: "/bin/bash", Args: []string{"-c", script}}
}

// Programs run beside the services stop before them, last started first,
// while Redis still answers; Stop leaves no process behind.
func TestStopStopsProgramsFirstLastFirst(t *testing.T) {
	dir := t.TempDir()
	s := startStack(t, dir)
	defer s.Stop()
	port := s.RedisAddr[strings.LastIndex(s.RedisAddr, ":")+1:]
	log := filepath.Join(dir, "stops")
	var pids []int
	for _, name := range []string{"first", "second"} {
		pid, err := s.Run(program(name, port, log))
		if err != nil || pid == 0 {
			t.Fatalf("run %s: pid %d, %v", name, pid, err)
		}
		pids = append(pids, pid)
	}
	pids = append(pids, s.PID("redis"), s.PID("minio"))
	time.Sleep(200 * time.Millisecond) // the traps are set
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(log)
	if got := string(b); got != "second +PONG\nfirst +PONG\n" {
		t.Errorf("stops in order (name, Redis's answer):\n%s", got)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("pid %d still runs after Stop", pid)
		}
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// Wait returns nil when its context ends, and an error naming the program
// and its log when a program exits on its own.
func TestWaitReportsAProgramThatExits(t *testing.T) {
	dir := t.TempDir()
	s := startStack(t, dir)
	defer s.Stop()
	if _, err := s.Run(Program{Name: "stays", Path: "/bin/sleep", Args: []string{"60"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Fatalf("wait until the context ends: %v", err)
	}
	if _, err := s.Run(Program{Name: "quits", Log: "shared.log", Path: "/bin/sh", Args: []string{"-c", "echo bye; exit 3"}}); err != nil {
		t.Fatal(err)
	}
	err := s.Wait(context.Background())
	want := "quits exited (exit status 3); see " + filepath.Join(dir, "logs", "shared.log")
	if err == nil || err.Error() != want {
		t.Fatalf("wait: %v, want %s", err, want)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "logs", "shared.log")); string(b) != "bye\n" {
		t.Errorf("log %q", b)
	}
	if s.PID("stays") == 0 {
		t.Error("Wait stopped a program; only Stop does")
	}
}

// A program that ignores SIGTERM is killed after its stop timeout, and
// Stop says so.
func TestStopKillsAProgramAfterItsStopTimeout(t *testing.T) {
	s := startStack(t, t.TempDir())
	defer s.Stop()
	pid, err := s.Run(Program{Name: "stubborn", Path: "/bin/bash", Args: []string{"-c", "trap '' TERM; while :; do sleep 0.05; done"}, StopTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	err = s.Stop()
	if err == nil || !strings.Contains(err.Error(), "stubborn did not stop in 300ms; killed") {
		t.Errorf("stop: %v", err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("pid %d still runs", pid)
	}
}

// The services listen where Options.Host says (another loopback address
// here, so the test needs no bridge), and a host that is not an IP
// address is refused before anything starts.
func TestStartListensOnHost(t *testing.T) {
	if _, err := Start(context.Background(), Options{Dir: t.TempDir(), Host: "localhost"}); err == nil || !strings.Contains(err.Error(), `devstack host "localhost": want an IP address`) {
		t.Errorf("start on a host name: %v", err)
	}
	s := startStackWith(t, Options{Dir: t.TempDir(), Host: "127.0.0.2"})
	defer s.Stop()
	for _, addr := range []string{s.RedisAddr, s.MinioAddr, s.MinioConsoleAddr} {
		if !strings.HasPrefix(addr, "127.0.0.2:") {
			t.Errorf("listening on %s, want 127.0.0.2", addr)
		}
	}
	if err := pingRedis(s.RedisAddr); err != nil {
		t.Errorf("redis on %s: %v", s.RedisAddr, err)
	}
	if err := minioReady(s.MinioAddr); err != nil {
		t.Errorf("minio on %s: %v", s.MinioAddr, err)
	}
}
