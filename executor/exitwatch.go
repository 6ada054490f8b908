package executor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/runsc"
)

// A sandbox's boot process logs how its application exited ("application
// exiting with ...", see runsc.BootExitStatus) the moment it does, then takes
// about a second more to tear itself down before its process ends. The
// exit watcher reports the status from that log line as soon as it is
// written, without a `runsc wait` process per sandbox: it watches the log
// directory with inotify, reading only what was appended. When the sandbox
// process ends without the line (the memory limit's OOM kill, a sandbox
// brought down by a fork bomb, a crash), it reports that instead, through a
// pidfd of the process `runsc create --pid-file` named.

// errNoExitStatus: the sandbox ended without logging its application's
// exit status.
var errNoExitStatus = errors.New("the sandbox ended without an exit status")

// exitWatch follows one sandbox's boot log and process.
type exitWatch struct {
	dir    string
	ino    int
	pidfd  int // -1 when the process was already gone
	wake   [2]int
	result chan waitResult
	// mu guards closed: once the watch has closed its descriptors, Close
	// must not write to a number the process may have reused.
	mu     sync.Mutex
	closed bool
	// offsets of what was read of each log file, and the unterminated
	// rest of each one's last line.
	offsets map[string]int64
	partial map[string][]byte
	status  int
	found   bool
}

type waitResult struct {
	status int
	err    error
}

// watchExit starts watching the boot log in dir and the sandbox process
// pid. Its result arrives once on Result; Close ends the watch.
func watchExit(dir string, pid int) (*exitWatch, error) {
	w := &exitWatch{dir: dir, pidfd: -1, result: make(chan waitResult, 1), offsets: map[string]int64{}, partial: map[string][]byte{}}
	var err error
	if w.ino, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(w.ino, dir, unix.IN_MODIFY|unix.IN_CREATE|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(w.ino)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		w.pidfd = fd
	} else if !errors.Is(err, unix.ESRCH) {
		unix.Close(w.ino)
		return nil, fmt.Errorf("pidfd of sandbox process %d: %w", pid, err)
	}
	if err := unix.Pipe2(w.wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		w.closeFDs()
		return nil, err
	}
	go w.run()
	return w, nil
}

// Result delivers the status, or errNoExitStatus, or the watch's failure.
func (w *exitWatch) Result() <-chan waitResult { return w.result }

// Close stops the watch (a pending Result then never arrives).
func (w *exitWatch) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		unix.Write(w.wake[1], []byte{0})
	}
}

func (w *exitWatch) closeFDs() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, fd := range []int{w.ino, w.pidfd, w.wake[0], w.wake[1]} {
		if fd > 0 {
			unix.Close(fd)
		}
	}
}

func (w *exitWatch) run() {
	defer w.closeFDs()
	buf := make([]byte, 4096)
	for {
		// Read first: the line may be there before the first event.
		w.scan()
		if w.found {
			w.result <- waitResult{w.status, nil}
			return
		}
		fds := []unix.PollFd{{Fd: int32(w.ino), Events: unix.POLLIN}, {Fd: int32(w.wake[0]), Events: unix.POLLIN}}
		if w.pidfd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(w.pidfd), Events: unix.POLLIN})
		} else {
			// The process is gone: the log says it all now.
			w.result <- waitResult{-1, errNoExitStatus}
			return
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			w.result <- waitResult{-1, fmt.Errorf("watching the sandbox: %w", err)}
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		for {
			if _, err := unix.Read(w.ino, buf); err != nil {
				break
			}
		}
		if fds[2].Revents != 0 {
			// Ended: one last read of the log, then no more waiting.
			unix.Close(w.pidfd)
			w.pidfd = -1
		}
	}
}

// scan reads what was appended to the boot logs since the last scan and
// notes the last exit status stated.
func (w *exitWatch) scan() {
	logs, _ := filepath.Glob(filepath.Join(w.dir, "*.boot.txt"))
	for _, p := range logs {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if _, err := f.Seek(w.offsets[p], io.SeekStart); err != nil {
			f.Close()
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 4<<20))
		f.Close()
		w.offsets[p] += int64(len(b))
		b = append(w.partial[p], b...)
		i := bytes.LastIndexByte(b, '\n')
		w.partial[p] = append([]byte(nil), b[i+1:]...)
		for _, line := range strings.Split(string(b[:i+1]), "\n") {
			if status, ok := runsc.ExitStatusLine(line); ok {
				w.status, w.found = status, true
			}
		}
	}
}
