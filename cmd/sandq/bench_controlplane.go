package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/internal/bench"
	"github.com/sandq/sandq/jobs"
)

// controlPlaneOnly are the bench flags that only --control-plane reads;
// sandboxOnly those it refuses. --concurrency, --rate, --seed,
// --no-webhook, --out and --temp-dir serve both.
var (
	controlPlaneOnly = []string{"workers", "task-check-interval", "jobs", "duration", "producers", "input-bytes", "output-files", "output-bytes"}
	sandboxOnly      = []string{"quick", "variant", "floor-runs", "latency-jobs", "latency-concurrency", "throughput-jobs", "memory-jobs",
		"warm", "no-warm", "runsc", "platform", "image-dir", "image"}
)

func controlPlaneFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "control-plane", Usage: "measure the queue and store path alone: workers whose runner runs no sandbox, jobs/s, Redis calls, bytes and CPU, S3 requests per job (no root needed)"},
		&cli.StringFlag{Name: "workers", DefaultText: quoted(formatInts(bench.DefaultCPWorkers())), Usage: "with --control-plane: numbers of in-process workers, a row each (with each --concurrency, default 8)"},
		&cli.StringFlag{Name: "task-check-interval", DefaultText: quoted(jobs.DefaultTaskCheckInterval.String()),
			Usage: "with --control-plane: the workers' --task-check-interval (how often an idle worker polls Redis), a list, a set of rows each (e.g. 10ms,100ms)"},
		&cli.IntFlag{Name: "jobs", DefaultText: intText(bench.DefaultCPJobs), Usage: "with --control-plane: jobs sent per row"},
		&cli.DurationFlag{Name: "duration", Usage: "with --control-plane: send jobs for this long per row instead of --jobs"},
		&cli.IntFlag{Name: "producers", DefaultText: intText(bench.DefaultCPProducers), Usage: "with --control-plane and no --rate: goroutines submitting jobs as fast as they can"},
		&cli.StringFlag{Name: "input-bytes", DefaultText: quoted(jobs.FormatSize(bench.DefaultCPInputBytes)), Usage: "with --control-plane: size of each job's one input"},
		&cli.IntFlag{Name: "output-files", DefaultText: intText(bench.DefaultCPOutputFiles), Usage: "with --control-plane: output files each job writes"},
		&cli.StringFlag{Name: "output-bytes", DefaultText: quoted(jobs.FormatSize(bench.DefaultCPOutputBytes)), Usage: "with --control-plane: size of each output file"},
	}
}

// benchControlPlane runs `sandq bench --control-plane`.
func benchControlPlane(c *cli.Context) error {
	o, err := controlPlaneOptions(c)
	if err != nil {
		return err
	}
	o.Logger = newLogger(c)
	o.Progress = c.App.ErrWriter
	ctx, stop := interruptible(c)
	defer stop()
	rep, err := bench.RunControlPlane(ctx, o)
	if err != nil {
		return err
	}
	return printBenchReport(c, rep, rep.FailedJobs)
}

// printBenchReport prints a bench report's table, writes its JSON to --out
// if set, and exits 1 when failed jobs did not succeed.
func printBenchReport(c *cli.Context, rep interface {
	PrintTable(io.Writer) error
	WriteJSON(string) error
}, failed int) error {
	if err := rep.PrintTable(c.App.Writer); err != nil {
		return err
	}
	if out := c.String("out"); out != "" {
		if err := rep.WriteJSON(out); err != nil {
			return err
		}
	}
	if failed > 0 {
		return cli.Exit(fmt.Sprintf("%d jobs did not succeed (see above)", failed), exitJobNotSucceeded)
	}
	return nil
}

// controlPlaneOptions maps the flags onto bench.ControlPlaneOptions,
// refusing the sandbox bench's own; bench.ControlPlaneOptions.WithDefaults
// fills what they leave unset.
func controlPlaneOptions(c *cli.Context) (bench.ControlPlaneOptions, error) {
	if err := refuseFlags(c, sandboxOnly, "not with --control-plane"); err != nil {
		return bench.ControlPlaneOptions{}, err
	}
	o := bench.ControlPlaneOptions{
		Jobs: c.Int("jobs"), Duration: c.Duration("duration"), Producers: c.Int("producers"), OutputFiles: c.Int("output-files"),
		Seed: c.Int64("seed"), NoWebhook: c.Bool("no-webhook"), TempDir: c.String("temp-dir"),
	}
	for name, dst := range map[string]*[]int{"workers": &o.Workers, "concurrency": &o.Concurrency} {
		if c.IsSet(name) {
			ns, err := parseInts(c.String(name))
			if err != nil {
				return o, fmt.Errorf("--%s: %w", name, err)
			}
			*dst = ns
		}
	}
	if c.IsSet("task-check-interval") {
		ds, err := parseDurations(c.String("task-check-interval"))
		if err != nil {
			return o, fmt.Errorf("--task-check-interval: %w", err)
		}
		o.TaskCheckIntervals = ds
	}
	// Without --rate, as fast as possible: the sandbox bench's default
	// rate is not this one's.
	if c.IsSet("rate") {
		if o.Rate = c.Float64("rate"); !(o.Rate > 0) {
			return o, fmt.Errorf("--rate %v: must be over 0 (leave it out to send as fast as possible)", o.Rate)
		}
	}
	for name, dst := range map[string]*int64{"input-bytes": &o.InputBytes, "output-bytes": &o.OutputBytes} {
		if c.IsSet(name) {
			n, err := jobs.ParseSize(c.String(name))
			if err != nil {
				return o, fmt.Errorf("--%s: %w", name, err)
			}
			if n <= 0 {
				return o, fmt.Errorf("--%s %s: must be over 0", name, c.String(name))
			}
			*dst = n
		}
	}
	for _, name := range []string{"jobs", "producers", "output-files"} {
		if c.IsSet(name) && c.Int(name) < 1 {
			return o, fmt.Errorf("--%s %d: must be at least 1", name, c.Int(name))
		}
	}
	return o, nil
}

// refuseFlags fails when any of names was set, saying why.
func refuseFlags(c *cli.Context, names []string, why string) error {
	var set []string
	for _, n := range names {
		if c.IsSet(n) && !fromEnvironment(c, n) {
			set = append(set, "--"+n)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("%s: %s", strings.Join(set, ", "), why)
	}
	return nil
}

// fromEnvironment reports whether flag name has its value from the
// environment (SANDQ_IMAGE_DIR, say): an operator's environment is not a
// request the mode can refuse. A value given on the command line differs
// from the environment's (the same value twice asks nothing new).
func fromEnvironment(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		ef, ok := f.(interface{ GetEnvVars() []string })
		if !ok || !slices.Contains(f.Names(), name) {
			continue
		}
		for _, e := range ef.GetEnvVars() {
			if v, set := os.LookupEnv(e); set && v == fmt.Sprint(c.Value(name)) {
				return true
			}
		}
	}
	return false
}
