package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/bytesize"
	"github.com/sandq/sandq/jobs"
)

// Progress of long work on stderr: the phases of an image build and the
// bytes of an enqueue's uploads. On a terminal it is one status line,
// redrawn in place and cleared at the end; elsewhere (a log, a CI job) it
// is plain lines, few of them: a line per build phase start and end, a
// package count at most every plainEvery.
const (
	// plainEvery is the least time between two plain count lines.
	plainEvery = 15 * time.Second
	// tickEvery is how often an upload's status line is redrawn on a
	// terminal (a build's shows whole seconds, redrawn every second).
	tickEvery = 250 * time.Millisecond
	// uploadShowAfter keeps a quick upload's line from flashing by.
	uploadShowAfter = 500 * time.Millisecond
)

// statusLine is the one line of a terminal that progress redraws.
type statusLine struct {
	w     io.Writer
	shown bool
}

// show replaces the line's text: back to its start, the text, the rest of
// the line erased.
func (s *statusLine) show(text string) {
	fmt.Fprintf(s.w, "\r%s\033[K", text)
	s.shown = true
}

// clear erases the line, if anything is on it, leaving the cursor at its
// start for what is printed next.
func (s *statusLine) clear() {
	if s.shown {
		io.WriteString(s.w, "\r\033[K")
		s.shown = false
	}
}

// ticker calls fn every d until the returned func is called.
func ticker(d time.Duration, fn func()) (stop func()) {
	t := time.NewTicker(d)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-t.C:
				fn()
			case <-done:
				return
			}
		}
	}()
	return func() {
		t.Stop()
		close(done)
		wg.Wait()
	}
}

// buildProgress shows an image build's events (image.BuildOptions.Progress).
type buildProgress struct {
	mu     sync.Mutex
	w      io.Writer
	term   bool
	now    func() time.Time
	line   statusLine
	closed bool

	phase      string
	phaseStart time.Time
	done       time.Duration // the phase's time once it is done, or 0
	count      string        // the phase's latest package count, as shown
	lastPlain  time.Time     // when the phase's last plain line was printed
}

func newBuildProgress(w io.Writer, term bool, now func() time.Time) *buildProgress {
	return &buildProgress{w: w, term: term, now: now, line: statusLine{w: w}}
}

// event takes one of the build's events.
func (p *buildProgress) event(e image.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	now := p.now()
	switch e.Kind {
	case image.PhaseStarted:
		p.phase, p.phaseStart, p.done, p.count, p.lastPlain = e.Phase, now, 0, "", now
		if !p.term {
			fmt.Fprintf(p.w, "%s started\n", e.Phase)
		}
	case image.PackageCount:
		p.count = countText(e)
		if !p.term && now.Sub(p.lastPlain) >= plainEvery {
			fmt.Fprintf(p.w, "%s %ds, %s\n", e.Phase, int(e.Elapsed.Seconds()), p.count)
			p.lastPlain = now
		}
	case image.PhaseDone:
		// A phase's time stops at its end, also on the status line.
		p.done = max(e.Elapsed, time.Nanosecond)
		if !p.term {
			fmt.Fprintf(p.w, "%s done in %.1fs", e.Phase, e.Elapsed.Seconds())
			if p.count != "" {
				fmt.Fprintf(p.w, ", %s", p.count)
			}
			fmt.Fprintln(p.w)
		}
	}
	p.draw()
}

// countText is a package count as shown: "packages: 12/143 fetched", or
// "packages: 57 fetched" when the total is not known.
func countText(e image.Event) string {
	if e.Total > 0 {
		return fmt.Sprintf("packages: %d/%d %s", e.Done, e.Total, e.Step)
	}
	return fmt.Sprintf("packages: %d %s", e.Done, e.Step)
}

// draw redraws a terminal's status line: the phase, its time so far and
// its package count.
func (p *buildProgress) draw() {
	if !p.term || p.closed || p.phase == "" {
		return
	}
	elapsed := p.done
	if elapsed == 0 {
		elapsed = p.now().Sub(p.phaseStart)
	}
	text := fmt.Sprintf("%s %ds", p.phase, int(elapsed.Seconds()))
	if p.count != "" {
		text += ", " + p.count
	}
	p.line.show(text)
}

// tick redraws the status line, so its time goes on between events.
func (p *buildProgress) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw()
}

// close clears the status line; nothing is shown after.
func (p *buildProgress) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line.clear()
	p.closed = true
}

// logWriter is the build's log destination: a log line clears the status
// line, is written, and the status line is drawn again below it.
func (p *buildProgress) logWriter() io.Writer { return progressLog{p} }

type progressLog struct{ p *buildProgress }

func (l progressLog) Write(b []byte) (int, error) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	l.p.line.clear()
	n, err := l.p.w.Write(b)
	l.p.draw()
	return n, err
}

// uploadProgress counts the bytes an enqueue reads from its script and
// inputs for upload, through the store or the API server: read by the
// upload as it sends, so the count runs at most a buffer ahead of the
// network.
type uploadProgress struct {
	mu     sync.Mutex
	w      io.Writer
	term   bool
	now    func() time.Time
	line   statusLine
	closed bool

	total     int64
	sent      atomic.Int64
	start     time.Time
	lastPlain time.Time
}

func newUploadProgress(w io.Writer, term bool, now func() time.Time) *uploadProgress {
	t := now()
	return &uploadProgress{w: w, term: term, now: now, line: statusLine{w: w}, start: t, lastPlain: t}
}

// wrap counts f's bytes as they are read, adding its size to the total.
func (u *uploadProgress) wrap(f jobs.File) jobs.File {
	u.total += f.Size
	open := f.Open
	f.Open = func() (io.ReadCloser, error) {
		r, err := open()
		if err != nil {
			return nil, err
		}
		return &countingReader{r: r, n: &u.sent}, nil
	}
	return f
}

// text is the upload's state: bytes sent of the total, percent, rate.
func (u *uploadProgress) text(verb string, now time.Time) string {
	sent := min(u.sent.Load(), u.total)
	pct := 100.0
	if u.total > 0 {
		pct = float64(sent) * 100 / float64(u.total)
	}
	rate := 0.0
	if s := now.Sub(u.start).Seconds(); s > 0 {
		rate = float64(sent) / s
	}
	return fmt.Sprintf("%s %s of %s (%.0f%%), %s/s", verb, bytesize.Tenth(sent), bytesize.Tenth(u.total), pct, bytesize.Tenth(int64(rate)))
}

// tick shows the upload's state: on a terminal once it has gone on for
// uploadShowAfter, elsewhere a line every plainEvery.
func (u *uploadProgress) tick() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	now := u.now()
	switch {
	case u.term && now.Sub(u.start) >= uploadShowAfter:
		u.line.show(u.text("uploading", now))
	case !u.term && now.Sub(u.lastPlain) >= plainEvery:
		fmt.Fprintln(u.w, u.text("uploaded", now))
		u.lastPlain = now
	}
}

// close ends the display: a terminal's line is cleared; plain output ends
// with the total and the time it took when the enqueue succeeded.
func (u *uploadProgress) close(ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	u.closed = true
	u.line.clear()
	if !u.term && ok {
		fmt.Fprintf(u.w, "uploaded %s in %.1fs\n", bytesize.Tenth(u.total), u.now().Sub(u.start).Seconds())
	}
}

// showUploads counts the bytes of sub's files as the enqueue reads them
// and shows them on stderr: on a terminal unless --quiet, elsewhere only
// with --progress, so that logs stay clean. The returned func ends the
// display, ok when the enqueue succeeded.
func showUploads(c *cli.Context, sub *jobs.Submission) func(ok bool) {
	isTerm := isTerminal(os.Stderr)
	if c.Bool("quiet") || (!isTerm && !c.Bool("progress")) {
		return func(bool) {}
	}
	u := newUploadProgress(os.Stderr, isTerm, time.Now)
	sub.Script = u.wrap(sub.Script)
	for i := range sub.Inputs {
		sub.Inputs[i] = u.wrap(sub.Inputs[i])
	}
	stop := ticker(tickEvery, u.tick)
	return func(ok bool) {
		stop()
		u.close(ok)
	}
}

// countingReader adds the bytes read through it to n.
type countingReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
