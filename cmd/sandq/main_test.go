package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestPermuteArgs(t *testing.T) {
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{enqueueCommand(), statusCommand(), imageCommand()}}
	cases := []struct{ in, want string }{
		{"sandq enqueue s.py --input a.csv --wait", "sandq enqueue --input a.csv --wait s.py"},
		{"sandq enqueue s.py --input=a.csv --json --arg -x", "sandq enqueue --input=a.csv --json --arg -x s.py"},
		{"sandq --redis-addr r:1 enqueue s.py --queue q -i b.csv", "sandq --redis-addr r:1 --queue q enqueue -i b.csv s.py"},
		{"sandq enqueue s.py --s3-bucket=b", "sandq --s3-bucket=b enqueue s.py"},
		{"sandq image build base --packages-file p.txt --force", "sandq image build --packages-file p.txt --force base"},
		{"sandq enqueue s.py -- --input", "sandq enqueue s.py -- --input"},
		{"sandq status ID --json", "sandq status --json ID"},
		{"sandq --help", "sandq --help"},
	}
	for _, c := range cases {
		got := strings.Join(permuteArgs(app, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("permuteArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
