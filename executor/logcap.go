package executor

import (
	"fmt"
	"os"
	"sync"
)

// ring keeps the last max bytes written to it. Its buffer grows with what
// is written, up to max, and only then wraps: most streams are short, and a
// buffer of max bytes made up front (a job's log tail is 2MiB per stream by
// default) would be allocated, zeroed and faulted in for every job, on the
// CPU its sandbox is booting on.
type ring struct {
	max  int
	buf  []byte // the bytes in order until full; then len(buf) == max, wrapped at next
	next int
	full bool
}

func newRing(n int) *ring { return &ring{max: n} }

func (r *ring) write(p []byte) {
	if r.max == 0 || len(p) == 0 {
		return
	}
	if !r.full && r.next+len(p) < r.max {
		if need := r.next + len(p); need > cap(r.buf) {
			nb := make([]byte, r.next, min(max(2*cap(r.buf), need, 512), r.max))
			copy(nb, r.buf[:r.next])
			r.buf = nb
		}
		r.buf = append(r.buf[:r.next], p...)
		r.next += len(p)
		return
	}
	if len(r.buf) < r.max {
		nb := make([]byte, r.max)
		copy(nb, r.buf[:r.next])
		r.buf = nb
	}
	if len(p) >= len(r.buf) {
		copy(r.buf, p[len(p)-len(r.buf):])
		r.next, r.full = 0, true
		return
	}
	n := copy(r.buf[r.next:], p)
	if n < len(p) {
		copy(r.buf, p[n:])
		r.full = true
	}
	r.next = (r.next + len(p)) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

func (r *ring) bytes() []byte {
	if !r.full {
		return append([]byte(nil), r.buf[:r.next]...)
	}
	out := make([]byte, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}

// LogCapture records one output stream of a sandbox with bounded memory and
// disk: the first headMax bytes go to a file, the last tailMax bytes after
// them are kept in memory and appended to the file at Close with a line that
// counts what was dropped in between. The last resultTail bytes of the whole
// stream are kept separately for the result document.
type LogCapture struct {
	mu       sync.Mutex
	path     string
	f        *os.File
	headMax  int64
	head     int64
	tail     *ring
	tailSeen int64
	last     *ring
	total    int64
	fileErr  error
	closed   bool
}

// NewLogCapture creates the log file at path.
func NewLogCapture(path string, headMax, tailMax int64, resultTail int) (*LogCapture, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return &LogCapture{path: path, f: f, headMax: headMax, tail: newRing(int(tailMax)), last: newRing(resultTail)}, nil
}

// Write never fails, so the stream is always drained.
func (l *LogCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	l.total += int64(n)
	l.last.write(p)
	if room := l.headMax - l.head; room > 0 {
		chunk := p
		if int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		if l.fileErr == nil && !l.closed {
			if _, err := l.f.Write(chunk); err != nil {
				l.fileErr = err
			}
		}
		l.head += int64(len(chunk))
		p = p[len(chunk):]
	}
	if len(p) > 0 {
		l.tail.write(p)
		l.tailSeen += int64(len(p))
	}
	return n, nil
}

// Close completes the log file.
func (l *LogCapture) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.fileErr == nil && l.tailSeen > 0 {
		kept := l.tail.bytes()
		if dropped := l.tailSeen - int64(len(kept)); dropped > 0 {
			_, l.fileErr = fmt.Fprintf(l.f, "\n[sandq: %d bytes dropped here]\n", dropped)
		}
		if l.fileErr == nil {
			_, l.fileErr = l.f.Write(kept)
		}
	}
	if err := l.f.Close(); l.fileErr == nil {
		l.fileErr = err
	}
	return l.fileErr
}

// LogSummary describes a captured stream.
type LogSummary struct {
	// Path is the log file on the host: the head, a drop marker and the tail.
	Path string
	// Tail is the last bytes of the stream, for the result document.
	Tail []byte
	// Bytes is how many bytes the stream carried in all.
	Bytes int64
	// DroppedBytes were neither in the head nor the tail kept in the file.
	DroppedBytes int64
}

// Summary is valid after Close.
func (l *LogCapture) Summary() LogSummary {
	l.mu.Lock()
	defer l.mu.Unlock()
	dropped := l.tailSeen - int64(len(l.tail.buf))
	if dropped < 0 {
		dropped = 0
	}
	return LogSummary{Path: l.path, Tail: l.last.bytes(), Bytes: l.total, DroppedBytes: dropped}
}
