package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

func enqueueCommand() *cli.Command {
	return &cli.Command{
		Name:      "enqueue",
		Usage:     "upload a script and its inputs and queue it as a job",
		ArgsUsage: "SCRIPT",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "input", Aliases: []string{"i"}, Usage: "input file, mounted at /mnt/inputs/<base name>; NAME=PATH names it (repeatable)"},
			&cli.StringSliceFlag{Name: "input-from", Usage: "JOB[:GLOB]: a finished job's outputs (those whose path GLOB matches) as inputs, copied inside the store and named by their paths (repeatable)"},
			&cli.StringSliceFlag{Name: "arg", Usage: "argument to the script (repeatable)"},
			&cli.StringSliceFlag{Name: "env", Usage: "environment variable K=V (repeatable)"},
			&cli.StringFlag{Name: "runtime", Usage: "python, node or shell (default: from the script's extension)"},
			&cli.DurationFlag{Name: "timeout", Usage: "wall-clock limit (default: the configured default)"},
			&cli.StringFlag{Name: "memory", Usage: "memory limit, e.g. 512MiB"},
			&cli.StringFlag{Name: "disk", Usage: "size of the sandbox's writable root, e.g. 1GiB"},
			&cli.StringFlag{Name: "output-size", Usage: "total bytes the job may write to /mnt/outputs"},
			&cli.IntFlag{Name: "output-files", Usage: "entries the job may create in /mnt/outputs"},
			&cli.StringFlag{Name: "cpus", Usage: "CPU limit in cores, e.g. 0.5 or 2 (default: the configured default)"},
			&cli.StringFlag{Name: "idempotency-key", Usage: "enqueueing twice with one key returns the first job"},
			&cli.StringSliceFlag{Name: "network", Usage: "none (default), default (the queue's default), or groups and hosts, comma-separated or repeated"},
			&cli.StringFlag{Name: "image", Usage: "image to run on (default: the queue's); the queue's workers must allow it"},
			&cli.StringFlag{Name: "webhook", Usage: "URL the result is POSTed to (signed, Standard Webhooks) when the job ends"},
			&cli.BoolFlag{Name: "wait", Usage: "follow the job and print its result"},
			downloadFlag,
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "quiet", Usage: "print nothing on stderr but errors: no upload progress, no notes, no job states while waiting"},
			&cli.BoolFlag{Name: "progress", Usage: "show upload progress also when stderr is not a terminal (a line every 15s)"},
		},
		Action: func(c *cli.Context) error {
			return withClient(c, "SCRIPT", func(ctx context.Context, client producer) error {
				return enqueue(ctx, c, client)
			})
		},
	}
}

func enqueue(ctx context.Context, c *cli.Context, client producer) error {
	if c.String("download") != "" && !c.Bool("wait") {
		return errors.New("--download needs --wait; without it, `sandq download JOB DIR` fetches the outputs once the job is done")
	}
	sub, err := submissionFromFlags(c)
	if err != nil {
		return err
	}
	if c.Bool("quiet") && c.Bool("progress") {
		return errors.New("--quiet and --progress contradict each other; give one")
	}
	uploaded := showUploads(c, &sub)
	enq, err := client.Enqueue(ctx, sub)
	uploaded(err == nil)
	if err != nil {
		return fmt.Errorf("job not queued: %w", err)
	}
	quiet := c.Bool("quiet")
	if enq.Existing && !quiet {
		fmt.Fprintf(os.Stderr, "job %s already exists for idempotency key %q; not enqueued again\n", enq.ID, sub.IdempotencyKey)
	}
	if !c.Bool("wait") {
		if c.Bool("json") {
			return printJSON(c.App.Writer, enq)
		}
		fmt.Fprintln(c.App.Writer, enq.ID)
		return nil
	}
	if !c.Bool("json") && !quiet {
		fmt.Fprintf(os.Stderr, "job %s queued on %s\n", enq.ID, enq.Queue)
	}
	return follow(ctx, c, client, enq.ID)
}

func submissionFromFlags(c *cli.Context) (jobs.Submission, error) {
	script, err := jobs.LocalFile(c.Args().First(), "")
	if err != nil {
		return jobs.Submission{}, fmt.Errorf("script: %w", err)
	}
	// The job names the queue of --queue, or the default queue, also
	// through a server (whose own default may differ).
	sub := jobs.Submission{
		Script: script, Runtime: c.String("runtime"), Args: c.StringSlice("arg"),
		Queue: cmp.Or(c.String("queue"), jobs.DefaultQueue), IdempotencyKey: c.String("idempotency-key"), Webhook: c.String("webhook"),
		Image: c.String("image"),
	}
	for _, in := range c.StringSlice("input") {
		path, name := in, ""
		if _, err := os.Stat(in); err != nil {
			if n, p, ok := strings.Cut(in, "="); ok {
				path, name = p, n
			}
		}
		f, err := jobs.LocalFile(path, name)
		if err != nil {
			return sub, fmt.Errorf("input: %w", err)
		}
		sub.Inputs = append(sub.Inputs, f)
	}
	for _, s := range c.StringSlice("input-from") {
		f, err := jobs.ParseInputFrom(s)
		if err != nil {
			return sub, fmt.Errorf("--input-from: %w", err)
		}
		sub.InputsFrom = append(sub.InputsFrom, f)
	}
	if kvs := c.StringSlice("env"); len(kvs) > 0 {
		sub.Env = map[string]string{}
		for _, kv := range kvs {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return sub, fmt.Errorf("env: %q is not K=V", kv)
			}
			sub.Env[k] = v
		}
	}
	sub.Limits.TimeoutSeconds = c.Duration("timeout").Seconds()
	for _, s := range []struct {
		flag string
		dst  *int64
	}{{"memory", &sub.Limits.MemoryBytes}, {"disk", &sub.Limits.DiskBytes}, {"output-size", &sub.Limits.OutputBytes}} {
		if v := c.String(s.flag); v != "" {
			n, err := jobs.ParseSize(v)
			if err != nil {
				return sub, fmt.Errorf("--%s: %w", s.flag, err)
			}
			if n == 0 {
				return sub, fmt.Errorf("--%s: must be more than 0", s.flag)
			}
			*s.dst = n
		}
	}
	sub.Limits.OutputFiles = c.Int("output-files")
	if c.IsSet("cpus") {
		cpus, err := jobs.ParseCPUs(c.String("cpus"))
		if err != nil {
			return sub, fmt.Errorf("--cpus: %w", err)
		}
		sub.Limits.CPUs = &cpus
	}
	for _, n := range c.StringSlice("network") {
		for _, part := range strings.Split(n, ",") {
			if part = strings.TrimSpace(part); part != "" {
				sub.Network = append(sub.Network, part)
			}
		}
	}
	return sub, nil
}

// producer submits and follows jobs: directly through Redis and the store
// (jobs.Client), or through the API server (api.Client, with --server).
type producer interface {
	Enqueue(context.Context, jobs.Submission) (*jobs.Enqueued, error)
	Status(context.Context, string) (*jobs.JobStatus, error)
	Wait(context.Context, string, func(*jobs.JobStatus)) (*jobs.JobStatus, error)
	// Follow is Wait with the job's live output after an entry (logs.go).
	Follow(ctx context.Context, id, after string, onState func(*jobs.JobStatus), onLog func(jobs.LogEvent) error) (*jobs.JobStatus, error)
	Logs(ctx context.Context, id, after string, follow bool, fn func(jobs.LogEvent) error) error
	Cancel(context.Context, string) (jobs.CancelOutcome, error)
	Close() error
}

func newProducer(c *cli.Context) (producer, error) {
	if server := c.String("server"); server != "" {
		return api.NewClient(server, c.String("token"))
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return nil, err
	}
	store, err := newStore(cfg)
	if err != nil {
		return nil, err
	}
	return jobs.NewClient(cfg, store, newLogger(c))
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show a job's state, and its result when it is done",
		ArgsUsage: "ID",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON: the result document when done, the state otherwise"}},
		Action: func(c *cli.Context) error {
			return withJob(c, func(ctx context.Context, client producer, id string) error {
				st, err := client.Status(ctx, id)
				if err != nil {
					return err
				}
				return printStatus(c, st)
			})
		},
	}
}

func waitCommand() *cli.Command {
	return &cli.Command{
		Name:      "wait",
		Usage:     "wait for a job to finish and print its result",
		ArgsUsage: "ID",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the result document as JSON"}, downloadFlag},
		Action: func(c *cli.Context) error {
			return withJob(c, func(ctx context.Context, client producer, id string) error {
				return follow(ctx, c, client, id)
			})
		},
	}
}

func cancelCommand() *cli.Command {
	return &cli.Command{
		Name:      "cancel",
		Usage:     "remove a pending job, or kill a running job's sandbox (it ends canceled)",
		ArgsUsage: "ID",
		Action: func(c *cli.Context) error {
			return withJob(c, func(ctx context.Context, client producer, id string) error {
				out, err := client.Cancel(ctx, id)
				if err != nil {
					return err
				}
				switch out {
				case jobs.CancelRemoved:
					fmt.Fprintf(c.App.Writer, "job %s removed from its queue before it started\n", id)
				case jobs.CancelSignalled:
					fmt.Fprintf(c.App.Writer, "job %s is being killed; it will end canceled\n", id)
				case jobs.CancelQueued:
					fmt.Fprintf(c.App.Writer, "job %s had not started; it will end canceled without running, and its webhook will be sent\n", id)
				}
				return nil
			})
		},
	}
}

func withJob(c *cli.Context, fn func(context.Context, producer, string) error) error {
	return withClient(c, "job ID", func(ctx context.Context, client producer) error {
		return fn(ctx, client, c.Args().First())
	})
}

// withClient checks for one argument, connects a producer and runs fn until
// it returns or the process is interrupted.
func withClient(c *cli.Context, what string, fn func(context.Context, producer) error) error {
	if c.NArg() != 1 {
		return errors.New(c.Command.Name + " takes exactly one " + what)
	}
	client, err := newProducer(c)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, stop := interruptible(c)
	defer stop()
	return fn(ctx, client)
}

// follow waits for a job, printing its live output (not with --json) and
// showing a live state line on a terminal, prints its result and exits
// non-zero unless it succeeded.
func follow(ctx context.Context, c *cli.Context, client producer, id string) error {
	start := time.Now()
	// enqueue --quiet shows no states (wait has no --quiet: false); the
	// job's own output is printed all the same.
	quiet := c.Bool("quiet")
	live := !quiet && isTerminal(c.App.ErrWriter)
	out := newLivePrinter(c.App.Writer, c.App.ErrWriter, live)
	var last jobs.State
	st, err := followJob(ctx, client, id, func(st *jobs.JobStatus) {
		if live {
			out.state(fmt.Sprintf("%s  %-9s %5.1fs", id, st.State, time.Since(start).Seconds()))
		} else if st.State != last && !c.Bool("json") && !quiet {
			out.notice(fmt.Sprintf("%s %s", id, st.State))
		}
		last = st.State
	}, out, c.Bool("json"))
	out.finish(true)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("stopped waiting; job %s goes on (sandq status %s)", id, id)
		}
		return err
	}
	// A job that did not succeed may still have written outputs: they are
	// downloaded too, and the exit status stays the job's.
	err = printResult(c, st, out.shownWhole(st.Result))
	if derr := downloadAfterWait(ctx, c, st.Result); derr != nil {
		return derr
	}
	return err
}

func printStatus(c *cli.Context, st *jobs.JobStatus) error { return printResult(c, st, nil) }

// printResult is printStatus leaving out the log tails shown already
// (shown["stdout"], shown["stderr"]): a follower printed them live.
func printResult(c *cli.Context, st *jobs.JobStatus, shown map[string]bool) error {
	w := c.App.Writer
	if c.Bool("json") {
		var err error
		if st.Result != nil {
			err = printJSON(w, jobs.StatusDoc{Result: st.Result, WebhookDelivery: st.Webhook})
		} else {
			err = printJSON(w, st)
		}
		if err != nil {
			return err
		}
	} else {
		printHumanShown(w, st, shown)
	}
	if st.State == jobs.StateDone && !st.Result.Status.Succeeded() {
		return cli.Exit("", exitJobNotSucceeded)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printHuman prints a job's state or result for a person. Everything a job,
// a host it asked for or a webhook receiver controls goes through esc (log
// tails through escLog), so none of it can drive the operator's terminal.
func printHuman(w io.Writer, st *jobs.JobStatus) { printHumanShown(w, st, nil) }

// printHumanShown is printHuman without the tails of the logs in shown,
// which were printed whole as the job wrote them.
func printHumanShown(w io.Writer, st *jobs.JobStatus, shown map[string]bool) {
	fmt.Fprintf(w, "job      %s (queue %s)\n", esc(st.ID), esc(st.Queue))
	if st.State != jobs.StateDone {
		fmt.Fprintf(w, "state    %s\n", esc(string(st.State)))
		if st.LastError != "" {
			fmt.Fprintf(w, "retried  %d of %d; last error: %s\n", st.Retried, st.MaxRetry, esc(st.LastError))
		}
		if !st.NextAttemptAt.IsZero() {
			fmt.Fprintf(w, "next     %s\n", st.NextAttemptAt.Format(time.RFC3339))
		}
		return
	}
	r := st.Result
	fmt.Fprintf(w, "status   %s\n", esc(string(r.Status)))
	if r.ExitCode != nil {
		fmt.Fprintf(w, "exit     %d\n", *r.ExitCode)
	}
	if r.Signal != "" {
		fmt.Fprintf(w, "signal   %s\n", esc(r.Signal))
	}
	if r.Reason != "" {
		fmt.Fprintf(w, "reason   %s\n", esc(r.Reason))
	}
	fmt.Fprintf(w, "duration %s (attempt %d)\n", time.Duration(r.DurationMS)*time.Millisecond, r.Attempt)
	if r.CPUSeconds != nil {
		fmt.Fprintf(w, "cpu      %gs used (limit: --cpus %g)\n", *r.CPUSeconds, r.Limits.CPUs)
	}
	for _, l := range []struct {
		name string
		doc  *jobs.LogDoc
	}{{"stdout", r.Stdout}, {"stderr", r.Stderr}} {
		if l.doc == nil || l.doc.Bytes == 0 {
			continue
		}
		note := ""
		if l.doc.Truncated {
			note = fmt.Sprintf(", last %d shown", len(l.doc.Tail))
		}
		if shown[l.name] {
			fmt.Fprintf(w, "--- %s (%d bytes, shown above) %s\n", l.name, l.doc.Bytes, esc(l.doc.URL))
			continue
		}
		tail := escLog(l.doc.Tail)
		fmt.Fprintf(w, "--- %s (%d bytes%s) %s\n%s", l.name, l.doc.Bytes, note, esc(l.doc.URL), tail)
		if !strings.HasSuffix(tail, "\n") {
			fmt.Fprintln(w)
		}
	}
	if len(r.Outputs) > 0 {
		fmt.Fprintf(w, "--- outputs (links expire %s)\n", r.Outputs[0].ExpiresAt.Format(time.RFC3339))
	}
	for _, o := range r.Outputs {
		fmt.Fprintf(w, "%s  %s  sha256:%s\n  %s\n", esc(o.Path), jobs.FormatSize(o.Size), esc(o.SHA256), esc(o.URL))
	}
	if t := r.Trimmed; t != nil {
		fmt.Fprintf(w, "--- result trimmed: %s (cut: %d outputs, %d skipped, %d egress requests, %d log tail bytes)\n",
			esc(t.Reason), t.Outputs, t.SkippedOutputs, t.EgressRequests, t.LogTailBytes)
		if t.Manifest != nil {
			fmt.Fprintf(w, "manifest (every output) %s\n", esc(t.Manifest.URL))
		}
	}
	for _, s := range r.SkippedOutputs {
		fmt.Fprintf(w, "skipped %s (%s): %s\n", esc(s.Path), esc(s.Type), esc(s.Reason))
	}
	if r.SkippedOutputsOmitted > 0 {
		fmt.Fprintf(w, "skipped %d more, not listed\n", r.SkippedOutputsOmitted)
	}
	if e := r.Egress; e != nil {
		fmt.Fprintf(w, "--- egress (%s): %d allowed, %d refused, %d failed\n", esc(strings.Join(e.Hosts, " ")), e.Allowed, e.Refused, e.Failed)
		for _, q := range e.Requests {
			if q.Decision != "allowed" {
				fmt.Fprintf(w, "%s %s:%d %s\n", esc(q.Decision), esc(q.Host), q.Port, esc(q.Reason))
			}
		}
	}
	if wh := st.Webhook; wh != nil {
		fmt.Fprintf(w, "--- webhook %s (id %s): %s\n", esc(wh.URL), esc(wh.ID), esc(wh.State))
		for _, a := range wh.Attempts {
			what := a.Error
			if a.StatusCode != 0 {
				what = fmt.Sprintf("HTTP %d %s", a.StatusCode, a.Error)
			}
			fmt.Fprintf(w, "%s  %-9s %s (%dms)\n", a.Time.Format(time.RFC3339), esc(a.Outcome), esc(strings.TrimSpace(what)), a.DurationMS)
		}
	}
}

// esc makes s safe to print on a terminal: control characters (C0, DEL,
// C1), Unicode's bidirectional controls and line separators, and bytes
// that are not UTF-8 are written as Go escapes (\x1b, \u202e, \xff).
func esc(s string) string { return escape(s, false) }

// escLog is esc for a log tail: newlines and tabs stay.
func escLog(s string) string { return escape(s, true) }

func escape(s string, keepLines bool) string {
	unsafe := func(r rune, size int) bool {
		if keepLines && (r == '\n' || r == '\t') {
			return false
		}
		return (r == utf8.RuneError && size == 1) || unicode.IsControl(r) || isBidiControl(r) || r == '\u2028' || r == '\u2029'
	}
	clean := true
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if unsafe(r, size) {
			clean = false
			break
		}
		i += size
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case !unsafe(r, size):
			b.WriteString(s[i : i+size])
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += size
	}
	return b.String()
}

// isBidiControl reports Unicode's bidirectional formatting characters,
// which reorder what a terminal shows.
func isBidiControl(r rune) bool {
	return r == '\u061c' || r == '\u200e' || r == '\u200f' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069')
}
