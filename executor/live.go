package executor

import "sync"

// The streams LiveOutput.Write names.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// LiveOutput hears a sandbox's stdout and stderr while its job runs, beside
// the logs the Outcome describes (see Sandbox.Follow).
type LiveOutput interface {
	// Write is given each chunk read from the sandbox's pipes, stream
	// StreamStdout or StreamStderr, one chunk at a time in the order they
	// were read. It must not block: the pipes are not drained while it
	// runs, and a job whose pipe is full waits. It must not keep p.
	Write(stream string, p []byte)
}

// liveTee hands a sandbox's output to its LiveOutput, if any. The drains
// of both pipes write through one tee, so the chunks reach the LiveOutput
// one at a time, in the order they were read.
type liveTee struct {
	mu  sync.Mutex
	out LiveOutput
}

func (t *liveTee) set(out LiveOutput) {
	t.mu.Lock()
	t.out = out
	t.mu.Unlock()
}

func (t *liveTee) write(stream string, p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.out != nil && len(p) > 0 {
		t.out.Write(stream, p)
	}
}

// teeCapture is what one pipe drains into: its log, then the tee.
type teeCapture struct {
	log    *LogCapture
	tee    *liveTee
	stream string
}

// Write never fails, so the stream is always drained.
func (w teeCapture) Write(p []byte) (int, error) {
	n, _ := w.log.Write(p)
	w.tee.write(w.stream, p)
	return n, nil
}
