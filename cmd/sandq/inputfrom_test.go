package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// runEnqueueFlags parses an enqueue command line as the CLI does and
// returns the submission it builds.
func runEnqueueFlags(t *testing.T, args ...string) (jobs.Submission, error) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "s.py")
	if err := os.WriteFile(script, []byte("print(1)"), 0o644); err != nil {
		t.Fatal(err)
	}
	var sub jobs.Submission
	var subErr error
	cmd := enqueueCommand()
	cmd.Action = func(c *cli.Context) error { sub, subErr = submissionFromFlags(c); return nil }
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{cmd}}
	if err := app.Run(append([]string{"sandq", "enqueue"}, append(args, script)...)); err != nil {
		t.Fatal(err)
	}
	return sub, subErr
}

func TestInputFromFlag(t *testing.T) {
	sub, err := runEnqueueFlags(t, "--input-from", "job-1", "--input-from", "job-2:*.csv", "--input-from=job-2:plots/[ab].png")
	if err != nil {
		t.Fatal(err)
	}
	want := []jobs.InputFrom{{Job: "job-1"}, {Job: "job-2", Glob: "*.csv"}, {Job: "job-2", Glob: "plots/[ab].png"}}
	if !reflect.DeepEqual(sub.InputsFrom, want) {
		t.Errorf("InputsFrom = %+v, want %+v", sub.InputsFrom, want)
	}
	for _, c := range []struct{ arg, want string }{
		{"job-1:", "empty glob"},
		{"job-1:[a-", "not a valid pattern"},
		{"no/such:*.csv", "is not valid"},
		{"job-1:/abs/*", "is absolute"},
	} {
		_, err := runEnqueueFlags(t, "--input-from", c.arg)
		if err == nil || !strings.HasPrefix(err.Error(), "--input-from: inputs_from: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--input-from %q: %v; want a refusal saying %q", c.arg, err, c.want)
		}
	}
}
