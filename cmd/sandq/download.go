package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// downloadFlag is --download of enqueue --wait and wait.
var downloadFlag = &cli.StringFlag{Name: "download", Usage: "when the job ends, fetch its outputs into `DIR` (created if needed), each checked against its sha256"}

func downloadCommand() *cli.Command {
	return &cli.Command{
		Name:      "download",
		Usage:     "fetch a finished job's outputs (and logs) into a directory, each checked against its sha256",
		ArgsUsage: "JOB DIR",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "include", Usage: "only outputs whose path matches `GLOB` (a glob without / also matches the base name; repeatable)"},
			&cli.BoolFlag{Name: "logs", Usage: "also fetch the job's stdout and stderr, as stdout.log and stderr.log"},
			&cli.BoolFlag{Name: "json", Usage: "print the files written as JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return errors.New("download takes a job ID and a directory")
			}
			id, dir := c.Args().Get(0), c.Args().Get(1)
			if dir == "" {
				return errors.New("download: the directory is empty")
			}
			client, err := newProducer(c)
			if err != nil {
				return err
			}
			defer client.Close()
			ctx, stop := interruptible(c)
			defer stop()
			st, err := client.Status(ctx, id)
			if err != nil {
				return err
			}
			if st.State != jobs.StateDone {
				return fmt.Errorf("job %s is not finished (%s): sandq wait %s --download %s waits for it and downloads", id, st.State, id, dir)
			}
			opts := jobs.DownloadOptions{Include: c.StringSlice("include"), Logs: c.Bool("logs")}
			return saveOutputs(ctx, c.App.Writer, c.Bool("json"), st.Result, dir, opts)
		},
	}
}

// downloadAfterWait is --download of enqueue --wait and wait: the outputs
// of the result just printed. With --json the document is on stdout, so
// the account of the files goes to stderr.
func downloadAfterWait(ctx context.Context, c *cli.Context, res *jobs.Result) error {
	dir := c.String("download")
	if dir == "" || res == nil {
		return nil
	}
	w := c.App.Writer
	if c.Bool("json") {
		w = c.App.ErrWriter
		if w == nil {
			w = os.Stderr
		}
	}
	return saveOutputs(ctx, w, false, res, dir, jobs.DownloadOptions{})
}

// saveOutputs downloads a result's files into dir and says what it wrote:
// a line per file as it lands and a summary, or with asJSON the list.
func saveOutputs(ctx context.Context, w io.Writer, asJSON bool, res *jobs.Result, dir string, opts jobs.DownloadOptions) error {
	if !asJSON {
		opts.Written = func(d jobs.Downloaded) {
			fmt.Fprintf(w, "wrote %s  %s\n", esc(d.File), byteCount(d.Size))
		}
	}
	done, err := jobs.Download(ctx, nil, res, dir, opts)
	if asJSON {
		if done == nil {
			done = []jobs.Downloaded{}
		}
		if perr := printJSON(w, done); perr != nil && err == nil {
			err = perr
		}
	} else {
		var total int64
		for _, d := range done {
			total += d.Size
		}
		switch {
		case err != nil:
			fmt.Fprintf(w, "%d files (%s) written in %s before the error\n", len(done), byteCount(total), esc(dir))
		case len(done) == 0:
			fmt.Fprintf(w, "job %s has no outputs; nothing written in %s\n", esc(res.ID), esc(dir))
		default:
			fmt.Fprintf(w, "%d files (%s) written in %s, each checked against the result\n", len(done), byteCount(total), esc(dir))
		}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("download of job %s stopped: %w", res.ID, err)
		}
		return fmt.Errorf("download of job %s: %w", res.ID, err)
	}
	return nil
}

func byteCount(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%d bytes, %s", n, jobs.FormatSize(n))
}
