package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/sandq/sandq/jobs"
)

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a job's live output: what its stream still holds, and with --follow what it writes until it ends",
		ArgsUsage: "ID",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "go on printing the output as the job writes it, until the job ends"},
		},
		Action: func(c *cli.Context) error {
			return withJob(c, func(ctx context.Context, client producer, id string) error {
				out := newLivePrinter(c.App.Writer, c.App.ErrWriter, false)
				err := client.Logs(ctx, id, "", c.Bool("follow"), out.event)
				out.finish(false)
				if errors.Is(err, context.Canceled) {
					return nil // Ctrl-C ends a follow; the job goes on
				}
				if err != nil {
					return err
				}
				if out.events == 0 {
					fmt.Fprintf(c.App.ErrWriter, "job %s has no live output: it wrote none (yet), or its stream expired with its result (sandq status %s shows the logs' tails and links)\n", id, id)
				}
				return nil
			})
		},
	}
}

// followJob waits for a job as Wait does, printing its live output
// through out as it comes unless quiet (--json: stdout holds only the
// result). Live output that breaks off is given up with a note; the wait
// goes on.
func followJob(ctx context.Context, client producer, id string, onState func(*jobs.JobStatus), out *livePrinter, quiet bool) (*jobs.JobStatus, error) {
	if quiet {
		return client.Wait(ctx, id, onState)
	}
	st, err := client.Follow(ctx, id, "", onState, out.event)
	if err != nil && errors.Is(err, jobs.ErrLiveOutput) && ctx.Err() == nil {
		out.notice(fmt.Sprintf("--- live output stopped: %s; waiting for the result ---", esc(err.Error())))
		return client.Wait(ctx, id, onState)
	}
	return st, err
}

// livePrinter prints a job's live output: stdout chunks to stdout, stderr
// chunks to stderr, escaped for the terminal (escLog), with marker lines
// of its own on stderr for dropped output and a new attempt. On a
// terminal it also keeps the live state line (state): the line is cleared
// before output is written, and drawn again only when the output has
// ended its line, so that neither garbles the other. Safe for concurrent
// use.
type livePrinter struct {
	stdout, stderr io.Writer
	// shared is whether stdout shows on the terminal stderr's state
	// line is drawn on.
	shared bool
	// stateLine draws a live state line (stderr is a terminal).
	stateLine bool

	mu sync.Mutex
	// events counts the events printed.
	events  int
	attempt int
	// heard counts the bytes of each stream of the attempt printed, and
	// gap is set when some of the attempt's output was dropped, so that
	// the result need not print again what was all shown (shownWhole).
	heard map[string]int64
	gap   bool
	// carry is the start of a UTF-8 sequence a chunk ended in the middle
	// of, per stream, kept for the next chunk.
	carry map[string][]byte
	// openOut and openErr: the last byte written to stdout (stderr) was
	// not a newline.
	openOut, openErr bool
	// line is the state line last asked for; drawn whether it shows now.
	line  string
	drawn bool
}

// newLivePrinter prints to stdout and stderr; stateLine is whether a live
// state line is drawn on stderr (a terminal).
func newLivePrinter(stdout, stderr io.Writer, stateLine bool) *livePrinter {
	return &livePrinter{stdout: stdout, stderr: stderr, shared: stateLine && isTerminal(stdout), stateLine: stateLine, carry: map[string][]byte{}}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// event prints one event of the live output.
func (p *livePrinter) event(e jobs.LogEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearState()
	p.events++
	if e.Attempt != p.attempt {
		// A follower that starts on a retry is told too.
		if p.attempt != 0 || e.Attempt > 1 {
			p.ownLine(fmt.Sprintf("--- attempt %d ---", e.Attempt))
		}
		p.attempt = e.Attempt
		p.heard, p.gap = map[string]int64{}, false
	}
	if e.Dropped > 0 {
		p.gap = true
		p.ownLine(fmt.Sprintf("--- %s of output dropped: written faster than live output takes (the full logs are in the result) ---", jobs.FormatSize(e.Dropped)))
	}
	var err error
	if e.Stream != "" {
		p.heard[e.Stream] += int64(len(e.Data))
		err = p.write(e.Stream, e.Data)
	}
	if e.End {
		// Nothing more comes of this attempt: what is held back goes out
		// as it is.
		for _, s := range []string{"stdout", "stderr"} {
			if err == nil {
				err = p.flush(s)
			}
		}
	}
	p.drawState()
	return err
}

// writerOf is where a stream's chunks go.
func (p *livePrinter) writerOf(stream string) (io.Writer, *bool) {
	if stream == "stdout" {
		return p.stdout, &p.openOut
	}
	return p.stderr, &p.openErr
}

// write prints a chunk, holding back a UTF-8 sequence it ends in the
// middle of (the next chunk completes it), so that it is not escaped as
// broken bytes.
func (p *livePrinter) write(stream, data string) error {
	b := append(p.carry[stream], data...)
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	p.carry[stream] = append([]byte(nil), b[cut:]...)
	return p.put(stream, string(b[:cut]))
}

// flush prints what write held back of a stream.
func (p *livePrinter) flush(stream string) error {
	b := p.carry[stream]
	delete(p.carry, stream)
	return p.put(stream, string(b))
}

func (p *livePrinter) put(stream, s string) error {
	if s == "" {
		return nil
	}
	w, open := p.writerOf(stream)
	_, err := io.WriteString(w, escLog(s))
	*open = s[len(s)-1] != '\n'
	return err
}

// endLines ends the lines the output left open where a line of ours is
// about to go: on stderr, and on stdout when it shares the terminal.
func (p *livePrinter) endLines() {
	if p.openErr {
		fmt.Fprintln(p.stderr)
		p.openErr = false
	}
	if p.openOut && p.shared {
		fmt.Fprintln(p.stdout)
		p.openOut = false
	}
}

// ownLine prints a line of sandq's own on stderr, on a line of its own.
func (p *livePrinter) ownLine(s string) {
	p.flush("stdout")
	p.flush("stderr")
	p.endLines()
	fmt.Fprintln(p.stderr, s)
}

// notice is ownLine for callers.
func (p *livePrinter) notice(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearState()
	p.ownLine(s)
	p.drawState()
}

// state sets the live state line and draws it, unless output has left the
// terminal's line open (it is drawn once the output ends its line).
func (p *livePrinter) state(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line = line
	p.drawState()
}

func (p *livePrinter) drawState() {
	if !p.stateLine || p.line == "" || p.openErr || (p.openOut && p.shared) {
		return
	}
	fmt.Fprintf(p.stderr, "\r\033[K%s", p.line)
	p.drawn = true
}

func (p *livePrinter) clearState() {
	if p.drawn {
		fmt.Fprint(p.stderr, "\r\033[K")
		p.drawn = false
	}
}

// finish prints what is held back and leaves the state line (if drawn) on
// a line of its own. With more to print after it (the result), lines the
// output left open are ended; without, only those on a terminal.
func (p *livePrinter) finish(more bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flush("stdout")
	p.flush("stderr")
	if p.drawn {
		fmt.Fprintln(p.stderr)
		p.drawn = false
	}
	if p.openOut && (more || isTerminal(p.stdout)) {
		fmt.Fprintln(p.stdout)
	}
	if p.openErr && (more || isTerminal(p.stderr)) {
		fmt.Fprintln(p.stderr)
	}
	p.openOut, p.openErr = false, false
}

// shownWhole reports which of the result's logs were printed whole as live
// output: every byte of the attempt's stream, with nothing dropped.
func (p *livePrinter) shownWhole(r *jobs.Result) map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	shown := map[string]bool{}
	if r == nil || p.attempt != r.Attempt || p.gap {
		return shown
	}
	for name, doc := range map[string]*jobs.LogDoc{"stdout": r.Stdout, "stderr": r.Stderr} {
		shown[name] = doc != nil && doc.Bytes > 0 && p.heard[name] == doc.Bytes
	}
	return shown
}
