package executor

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/internal/testenv"
)

// watchers counts the goroutines running a job network manager's firewall
// watch (jobnet.Manager.Watch).
func watchers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return bytes.Count(buf, []byte("jobnet.(*Manager).Watch.func"))
}

// createdIn watches dir and returns a function that lists the names made in
// it since.
func createdIn(t *testing.T, dir string) func() []string {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var names []string
		buf := make([]byte, 64<<10)
		n, _ := unix.Read(fd, buf)
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			names = append(names, string(bytes.TrimRight(name, "\x00")))
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		return names
	}
}

// openUnder lists this process's open files below dir.
func openUnder(dir string) []string {
	fds, _ := filepath.Glob("/proc/self/fd/*")
	var out []string
	for _, fd := range fds {
		if p, err := os.Readlink(fd); err == nil && strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

// A runner whose egress proxy cannot start leaves nothing of what it made
// before: no firewall watcher, no job networks or firewall rules of its
// worker, no worker directory, no open lock.
func TestNewRunscRunnerLeaksNothingWhenTheProxyFails(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedNetns(t)
	ctx := context.Background()
	state := t.TempDir()
	workers := filepath.Join(state, "workers")
	if err := os.Mkdir(workers, 0o700); err != nil {
		t.Fatal(err)
	}
	made := createdIn(t, workers)
	before := watchers()

	// The proxy refuses a negative DNS timeout, after the job networks
	// were set up.
	r, err := NewRunscRunner(ctx, RunscConfig{StateDir: state, Network: &NetworkConfig{Proxy: egress.Config{DNSTimeout: -1}}})
	if err == nil {
		r.Close(ctx)
		t.Fatal("NewRunscRunner accepted a proxy config the proxy refuses")
	}
	if !strings.Contains(err.Error(), "egress proxy") {
		t.Fatalf("NewRunscRunner: %v, want the egress proxy's error", err)
	}

	ids := made()
	if len(ids) != 1 {
		t.Fatalf("made %q in %s, want one worker directory", ids, workers)
	}
	if n := watchers(); n != before {
		t.Errorf("%d firewall watchers run after the failed start, want %d as before", n, before)
	}
	if ents, _ := os.ReadDir(workers); len(ents) != 0 {
		t.Errorf("left in %s: %v", workers, ents)
	}
	if open := openUnder(state); len(open) != 0 {
		t.Errorf("files left open: %v", open)
	}
	m, err := jobnet.New(jobnet.Config{WorkerID: "leak-check"})
	if err != nil {
		t.Fatal(err)
	}
	leases, netns, ifaces, rules, err := m.Resources(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("worker %s left leases %v netns %v interfaces %v rules %v", ids[0], leases, netns, ifaces, rules)
	}
}
