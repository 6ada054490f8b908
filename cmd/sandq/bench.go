package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/bench"
)

func benchCommand() *cli.Command {
	quick := bench.Quick(bench.Options{})
	return &cli.Command{
		Name:  "bench",
		Usage: "measure latency and throughput against bare runsc on this machine, with its own Redis, MinIO and worker (as root); --control-plane measures the queue and store path alone",
		Flags: append(append([]cli.Flag{
			&cli.BoolFlag{Name: "quick", Usage: fmt.Sprintf("a short run (a few minutes): %d latency jobs, %d throughput jobs at concurrency %s, %d floor runs",
				quick.LatencyJobs, quick.ThroughputJobs, formatInts(quick.Concurrency), quick.FloorRuns)},
			&cli.StringFlag{Name: "variant", DefaultText: quoted(strings.Join(bench.DefaultVariants(), ",")), Usage: "variants of the trivial job: shell, python, python-pandas (on the analysis image)"},
			&cli.IntFlag{Name: "floor-runs", DefaultText: intText(bench.DefaultFloorRuns), Usage: "serial runs of each floor"},
			&cli.IntFlag{Name: "latency-jobs", DefaultText: intText(bench.DefaultLatencyJobs), Usage: "jobs sent open-loop in the latency run"},
			&cli.Float64Flag{Name: "rate", DefaultText: strconv.FormatFloat(bench.DefaultRate, 'g', -1, 64), Usage: "average jobs per second of the latency run (exponential gaps)"},
			&cli.IntFlag{Name: "latency-concurrency", DefaultText: "number of CPUs", Usage: "worker (and bare loop) concurrency of the latency run"},
			&cli.IntFlag{Name: "throughput-jobs", DefaultText: intText(bench.DefaultThroughputJobs), Usage: "pre-queued jobs drained at each concurrency"},
			&cli.StringFlag{Name: "concurrency", DefaultText: quoted(formatInts(bench.DefaultConcurrency())), Usage: "worker concurrencies of the throughput run"},
			&cli.IntFlag{Name: "memory-jobs", DefaultText: intText(bench.DefaultMemoryJobs), Usage: "jobs running at once while the child worker's memory is sampled"},
			&cli.BoolFlag{Name: "no-webhook", Usage: "no webhook receiver: latency to the result only"},
			&cli.IntFlag{Name: "warm", DefaultText: "latency concurrency, at least 2", Usage: "warm sandboxes (--warm-sandboxes) of the worker in the warm runs"},
			&cli.BoolFlag{Name: "no-warm", Usage: "skip the warm runs (sandq with warm sandboxes)"},
			&cli.BoolFlag{Name: "no-snapshots", Usage: "skip the restored runs of the python variants (sandq with snapshot templates, without and with a pool of --warm restored sandboxes)"},
			&cli.BoolFlag{Name: "explain", Usage: "in each latency run, also run the bare loop beside sandq's control plane (the same schedule through a worker whose runner runs no sandbox but holds each job as long as a bare container takes): what the queue, store, webhooks and worker cost the sandboxes, apart from sandq's sandbox path"},
			&cli.Int64Flag{Name: "seed", DefaultText: intText(bench.DefaultSeed), Usage: "seed of the open-loop schedule"},
			&cli.StringFlag{Name: "out", Usage: "also write the report as JSON to this file"},
			&cli.StringFlag{Name: "cpu-profile", Usage: "write a Go CPU profile of the bench process (the bench and its in-process workers, not runsc, Redis or MinIO) to this file, for `go tool pprof`"},
		}, append(sandboxFlags(quoted(image.DefaultDir)),
			&cli.StringFlag{Name: "temp-dir", Usage: "where the run keeps its services' data and sandboxes (default: the system's temporary directory)"})...),
			controlPlaneFlags()...),
		Action: func(c *cli.Context) error {
			if c.Bool("control-plane") {
				return benchControlPlane(c)
			}
			if err := refuseFlags(c, controlPlaneOnly, "only with --control-plane"); err != nil {
				return err
			}
			o, err := benchOptions(c)
			if err != nil {
				return err
			}
			if o.SandqBinary, err = os.Executable(); err != nil {
				return err
			}
			o.Logger = newLogger(c)
			o.Progress = c.App.ErrWriter
			if path := c.String("cpu-profile"); path != "" {
				stopProfile, err := startCPUProfile(path)
				if err != nil {
					return err
				}
				defer stopProfile()
			}
			ctx, stop := interruptible(c)
			defer stop()
			rep, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			return printBenchReport(c, rep, rep.FailedJobs)
		},
	}
}

// benchOptions maps the bench flags onto bench.Options: --quick presets a
// short run, flags set override it, and bench.Options.WithDefaults fills
// what neither sets.
func benchOptions(c *cli.Context) (bench.Options, error) {
	o := bench.Options{}
	if c.Bool("quick") {
		o = bench.Quick(o)
	}
	if c.IsSet("concurrency") {
		conc, err := parseInts(c.String("concurrency"))
		if err != nil {
			return o, fmt.Errorf("--concurrency: %w", err)
		}
		o.Concurrency = conc
	}
	if c.IsSet("variant") {
		o.Variants = strings.Split(c.String("variant"), ",")
	}
	for name, dst := range map[string]*int{"floor-runs": &o.FloorRuns, "latency-jobs": &o.LatencyJobs, "throughput-jobs": &o.ThroughputJobs} {
		if c.IsSet(name) {
			*dst = c.Int(name)
		}
	}
	o.Rate = c.Float64("rate")
	o.LatencyConcurrency = c.Int("latency-concurrency")
	o.MemoryJobs = c.Int("memory-jobs")
	o.NoWebhook = c.Bool("no-webhook")
	o.Warm, o.NoWarm, o.NoSnapshots = c.Int("warm"), c.Bool("no-warm"), c.Bool("no-snapshots")
	o.Explain = c.Bool("explain")
	o.Seed = c.Int64("seed")
	sb := sandboxSettingsFromFlags(c)
	o.Runsc, o.Platform, o.ImageDir, o.Image = sb.runsc.Runsc, sb.runsc.Platform, sb.imageDir, sb.image
	o.TempDir = c.String("temp-dir")
	return o, nil
}

// formatInts writes a comma-separated list of whole numbers.
func formatInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// parseInts reads a comma-separated list of whole numbers.
func parseInts(s string) ([]int, error) { return parseList(s, "a whole number", strconv.Atoi) }

// parseDurations reads a comma-separated list of durations (10ms,100ms).
func parseDurations(s string) ([]time.Duration, error) {
	return parseList(s, "a duration (like 10ms or 1s)", time.ParseDuration)
}

// parseList reads a comma-separated list, each item by parse; what names
// what an item must be.
func parseList[T any](s, what string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		v, err := parse(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not %s", f, what)
		}
		out = append(out, v)
	}
	return out, nil
}

// startCPUProfile starts writing a Go CPU profile to path; the function it
// returns stops it and closes the file.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
