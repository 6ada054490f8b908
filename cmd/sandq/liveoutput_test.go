package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// TestLiveOutputSizeFlag: unset is the default, a size is taken, 0 turns
// live output off, and a bad size is refused naming the flag.
func TestLiveOutputSizeFlag(t *testing.T) {
	for _, c := range []struct {
		args string
		want int64
		err  string
	}{
		{args: "", want: jobs.DefaultLiveOutputSize},
		{args: "--live-output-size 64KiB", want: 64 << 10},
		{args: "--live-output-size 0", want: jobs.NoLiveOutput},
		{args: "--live-output-size -1", err: "--live-output-size"},
		{args: "--live-output-size lots", err: "--live-output-size"},
	} {
		var got jobs.Config
		var gotErr error
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
			Name: "worker", Flags: workerFlags(),
			Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
		}}}
		if err := app.Run(append([]string{"sandq", "worker"}, strings.Fields(c.args)...)); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		if c.err != "" {
			if gotErr == nil || !strings.Contains(gotErr.Error(), c.err) {
				t.Errorf("%q: %v, want an error naming %s", c.args, gotErr, c.err)
			}
			continue
		}
		if gotErr != nil || got.Worker.LiveOutputBytes != c.want {
			t.Errorf("%q: live output bytes %d (%v), want %d", c.args, got.Worker.LiveOutputBytes, gotErr, c.want)
		}
	}
}
