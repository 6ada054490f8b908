package main

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/internal/bench"
)

// TestControlPlaneBenchFlags: the control-plane flags reach
// bench.ControlPlaneOptions, flags left out are left to its defaults, and
// each mode refuses the other's flags and bad values, naming them.
func TestControlPlaneBenchFlags(t *testing.T) {
	parse := func(args string) (bench.ControlPlaneOptions, error) {
		t.Helper()
		var got bench.ControlPlaneOptions
		cmd := benchCommand()
		inner := cmd.Action
		cmd.Action = func(c *cli.Context) error {
			if !c.Bool("control-plane") {
				return inner(c)
			}
			var err error
			got, err = controlPlaneOptions(c)
			return err
		}
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{cmd}}
		err := app.Run(strings.Fields(args))
		return got, err
	}
	got, err := parse("sandq bench --control-plane")
	if err != nil || !reflect.DeepEqual(got, bench.ControlPlaneOptions{}) {
		t.Errorf("no flags: %+v %v, want the zero options", got, err)
	}
	// A sandbox flag's value in the environment (as make test sets
	// SANDQ_IMAGE_DIR) is no request the mode refuses; on the command line
	// it is.
	t.Setenv("SANDQ_IMAGE_DIR", "/var/lib/sandq/images")
	if _, err := parse("sandq bench --control-plane"); err != nil {
		t.Errorf("SANDQ_IMAGE_DIR in the environment: %v", err)
	}
	if _, err := parse("sandq bench --control-plane --image-dir /x"); err == nil || !strings.Contains(err.Error(), "--image-dir: not with --control-plane") {
		t.Errorf("--image-dir on the command line: %v, want it refused", err)
	}
	got, err = parse("sandq bench --control-plane --workers 1,4 --concurrency 8 --task-check-interval 10ms,100ms --jobs 50 --duration 3s --rate 7 --producers 2 --input-bytes 1MiB --output-files 3 --output-bytes 2KiB --no-webhook --seed 9 --temp-dir /scratch")
	want := bench.ControlPlaneOptions{Workers: []int{1, 4}, Concurrency: []int{8}, TaskCheckIntervals: []time.Duration{10 * time.Millisecond, 100 * time.Millisecond}, Jobs: 50, Duration: 3 * time.Second, Rate: 7, Producers: 2,
		InputBytes: 1 << 20, OutputFiles: 3, OutputBytes: 2 << 10, NoWebhook: true, Seed: 9, TempDir: "/scratch"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("every flag:\n got %+v %v\nwant %+v", got, err, want)
	}
	for args, wantErr := range map[string]string{
		"sandq bench --control-plane --quick --warm 2":              "--quick, --warm: not with --control-plane",
		"sandq bench --control-plane --image x":                     "--image: not with --control-plane",
		"sandq bench --workers 2":                                   "--workers: only with --control-plane",
		"sandq bench --jobs 5 --output-bytes 1KiB":                  "--jobs, --output-bytes: only with --control-plane",
		"sandq bench --control-plane --workers 1,x":                 `--workers: "x" is not a whole number`,
		"sandq bench --control-plane --rate 0":                      "--rate 0: must be over 0",
		"sandq bench --control-plane --input-bytes lots":            "--input-bytes",
		"sandq bench --control-plane --output-bytes 0":              "--output-bytes 0: must be over 0",
		"sandq bench --control-plane --output-files 0":              "--output-files 0: must be at least 1",
		"sandq bench --control-plane --jobs 0":                      "--jobs 0: must be at least 1",
		"sandq bench --control-plane --concurrency 2,3,abc":         `--concurrency: "abc" is not a whole number`,
		"sandq bench --control-plane --task-check-interval 10ms,10": `--task-check-interval: "10" is not a duration`,
		"sandq bench --task-check-interval 100ms":                   "--task-check-interval: only with --control-plane",
	} {
		_, err := parse(args)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: %v, want an error with %q", args, err, wantErr)
		}
	}
	if !slices.Contains(controlPlaneOnly, "workers") || slices.ContainsFunc(controlPlaneOnly, func(n string) bool { return slices.Contains(sandboxOnly, n) }) {
		t.Error("a flag is both control-plane only and sandbox only")
	}
}
