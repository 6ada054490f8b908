package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// memory runs a child `sandq worker` (the binary as deployed) against the
// run's services and samples, from /proc, its RSS idle and with MemoryJobs
// jobs running, and the RSS of its runsc helper processes and of the
// sandboxes.
func (e *env) memory(ctx context.Context) (*MemoryReport, error) {
	k := e.o.MemoryJobs
	state := filepath.Join(e.dir, "memory-worker")
	queue := "bench-memory"
	logPath := filepath.Join(e.dir, "memory-worker.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(e.o.SandqBinary, "worker")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SANDQ_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"SANDQ_REDIS_ADDR="+e.cfg.RedisAddr, "SANDQ_S3_ENDPOINT="+e.cfg.Storage.Endpoint,
		"SANDQ_S3_ACCESS_KEY="+accessKey, "SANDQ_S3_SECRET_KEY="+secretKey, "SANDQ_S3_BUCKET="+bucket,
		"SANDQ_STATE_DIR="+state, "SANDQ_IMAGE_DIR="+e.o.ImageDir, "SANDQ_IMAGE="+e.o.Image,
		"SANDQ_RUNSC="+e.runsc.Path, "SANDQ_PLATFORM="+e.o.Platform,
		"SANDQ_QUEUES="+queue+"=1", "SANDQ_CONCURRENCY="+strconv.Itoa(k),
		"SANDQ_METRICS_ADDR=127.0.0.1:0", "SANDQ_LOG_LEVEL=info",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sandq worker: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("sandq worker: %w; log %s: %s", err, logPath, tail(logPath))
			}
			return nil
		case <-time.After(90 * time.Second):
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("sandq worker did not stop in 90s; log %s", logPath)
		}
	}
	defer stop()
	pid := cmd.Process.Pid

	// Ready when it logs that it started.
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte(`msg="worker started"`)) {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			if err == nil {
				err = errors.New("exit status 0")
			}
			return nil, fmt.Errorf("sandq worker exited before it started: %w: %s", err, tail(logPath))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sandq worker did not start in a minute: %s", tail(logPath))
		}
	}
	time.Sleep(3 * time.Second)
	idle, err := sampleRSS(pid, state, 10)
	if err != nil {
		return nil, err
	}

	// k jobs that sleep, so all run at once.
	ids := make([]string, 0, k)
	for range k {
		enq, err := e.client.Enqueue(ctx, sleeper.submission(queue, ""))
		if err != nil {
			return nil, fmt.Errorf("enqueue: %w", err)
		}
		ids = append(ids, enq.ID)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		p, err := scanProcs(pid, state)
		if err != nil {
			return nil, err
		}
		if p.running >= k {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d sandboxes running after a minute: %s", p.running, k, tail(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	busy, err := sampleRSS(pid, state, 10)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		res, _, err := e.awaitResult(ctx, queue, id, 5*time.Minute)
		if err != nil {
			return nil, err
		}
		if err := sleeper.checkResult(res); err != nil {
			return nil, err
		}
	}
	if err := stop(); err != nil {
		return nil, err
	}
	return &MemoryReport{
		IdleWorkerRSSKiB: idle.worker, RunningJobs: k, BusyWorkerRSSKiB: busy.worker,
		WorkerPerJobKiB:  (busy.worker - idle.worker) / int64(k),
		HelpersPerJobKiB: busy.helpers / int64(k), SandboxPerJobKiB: busy.sandboxes / int64(k),
		Samples: 10,
	}, nil
}

// procs is the RSS of a worker and the processes about its sandboxes.
type procs struct {
	worker, helpers, sandboxes int64
	// running counts the sandboxes (runsc-sandbox boot processes): one
	// per running job, as the child worker keeps no warm ones.
	running int
}

// scanProcs reads the RSS of the worker pid, of its runsc children (its
// helpers), and of every other process whose command line names its state
// directory (runsc sandbox and gofer processes).
func scanProcs(pid int, state string) (procs, error) {
	var p procs
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return p, err
	}
	for _, ent := range ents {
		n, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		rss, ppid, ok := procStatus(n)
		if !ok {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		switch {
		case n == pid:
			p.worker = rss
		case ppid == pid:
			p.helpers += rss
		case strings.Contains(string(cmdline), state):
			p.sandboxes += rss
			if len(args) > 0 && args[0] == "runsc-sandbox" && slices.Contains(args, "boot") {
				p.running++
			}
		}
	}
	if p.worker == 0 {
		return p, fmt.Errorf("worker process %d is gone", pid)
	}
	return p, nil
}

// procStatus reads VmRSS (KiB) and PPid from /proc/<pid>/status.
func procStatus(pid int) (rss int64, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "VmRSS:"); found {
			rss, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
		if v, found := strings.CutPrefix(line, "PPid:"); found {
			ppid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return rss, ppid, true
}

// sampleRSS takes n samples 200ms apart and returns their medians.
func sampleRSS(pid int, state string, n int) (procs, error) {
	var w, h, s []int64
	for i := range n {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		p, err := scanProcs(pid, state)
		if err != nil {
			return procs{}, err
		}
		w, h, s = append(w, p.worker), append(h, p.helpers), append(s, p.sandboxes)
	}
	med := func(v []int64) int64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	return procs{worker: med(w), helpers: med(h), sandboxes: med(s)}, nil
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}
