package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/internal/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure latency and throughput against bare runsc on this machine, with its own Redis, MinIO and worker (as root)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quick", Usage: "a short run (about two minutes): 20 latency jobs, 40 throughput jobs at concurrency 1,2, 3 floor runs"},
			&cli.StringFlag{Name: "variant", Value: "shell,python", Usage: "variants of the trivial job: shell, python"},
			&cli.IntFlag{Name: "floor-runs", Value: 10, Usage: "serial runs of each floor"},
			&cli.IntFlag{Name: "latency-jobs", Value: 200, Usage: "jobs sent open-loop in the latency run"},
			&cli.Float64Flag{Name: "rate", Value: 2, Usage: "average jobs per second of the latency run (exponential gaps)"},
			&cli.IntFlag{Name: "latency-concurrency", DefaultText: "number of CPUs", Usage: "worker (and bare loop) concurrency of the latency run"},
			&cli.IntFlag{Name: "throughput-jobs", Value: 500, Usage: "pre-queued jobs drained at each concurrency"},
			&cli.StringFlag{Name: "concurrency", Value: "1,2,4,8", Usage: "worker concurrencies of the throughput run"},
			&cli.IntFlag{Name: "memory-jobs", Value: 2, Usage: "jobs running at once while the child worker's memory is sampled"},
			&cli.BoolFlag{Name: "no-webhook", Usage: "no webhook receiver: latency to the result only"},
			&cli.IntFlag{Name: "warm", DefaultText: "latency concurrency, at least 2", Usage: "warm sandboxes (--warm-sandboxes) of the worker in the warm runs"},
			&cli.BoolFlag{Name: "no-warm", Usage: "skip the warm runs (sandq with warm sandboxes)"},
			&cli.Int64Flag{Name: "seed", Value: 1, Usage: "seed of the open-loop schedule"},
			&cli.StringFlag{Name: "out", Usage: "also write the report as JSON to this file"},
			&cli.StringFlag{Name: "image-dir", Value: "/var/lib/sandq/images", EnvVars: env("IMAGE_DIR"), Usage: "where images live"},
			&cli.StringFlag{Name: "image", Value: "default", EnvVars: env("IMAGE"), Usage: "image jobs run on"},
			&cli.StringFlag{Name: "runsc", Value: "runsc", EnvVars: env("RUNSC"), Usage: "runsc binary"},
			&cli.StringFlag{Name: "platform", Value: "systrap", EnvVars: env("PLATFORM"), Usage: "runsc platform"},
			&cli.StringFlag{Name: "temp-dir", Usage: "where the run keeps its services' data and sandboxes (default: the system's temporary directory)"},
		},
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return cli.Exit(err, exitError)
			}
			o := bench.Options{}
			if c.Bool("quick") {
				o = bench.Quick(o)
			}
			conc, err := parseInts(c.String("concurrency"))
			if err != nil {
				return cli.Exit(fmt.Errorf("--concurrency: %w", err), exitError)
			}
			set := func(name string, apply func()) {
				if c.IsSet(name) || !c.Bool("quick") {
					apply()
				}
			}
			set("floor-runs", func() { o.FloorRuns = c.Int("floor-runs") })
			set("latency-jobs", func() { o.LatencyJobs = c.Int("latency-jobs") })
			set("throughput-jobs", func() { o.ThroughputJobs = c.Int("throughput-jobs") })
			set("concurrency", func() { o.Concurrency = conc })
			o.Variants = strings.Split(c.String("variant"), ",")
			o.Rate = c.Float64("rate")
			o.LatencyConcurrency = c.Int("latency-concurrency")
			o.MemoryJobs = c.Int("memory-jobs")
			o.NoWebhook = c.Bool("no-webhook")
			o.Warm, o.NoWarm = c.Int("warm"), c.Bool("no-warm")
			o.Seed = c.Int64("seed")
			o.SandqBinary = self
			o.ImageDir, o.Image = c.String("image-dir"), c.String("image")
			o.Runsc, o.Platform = c.String("runsc"), c.String("platform")
			o.TempDir = c.String("temp-dir")
			o.Logger = newLogger(c)
			o.Progress = c.App.ErrWriter
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := bench.Run(ctx, o)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			if err := rep.PrintTable(c.App.Writer); err != nil {
				return cli.Exit(err, exitError)
			}
			if out := c.String("out"); out != "" {
				if err := rep.WriteJSON(out); err != nil {
					return cli.Exit(err, exitError)
				}
			}
			if rep.FailedJobs > 0 {
				return cli.Exit(fmt.Sprintf("%d sandq jobs did not succeed (see above)", rep.FailedJobs), exitJobNotSucceeded)
			}
			return nil
		},
	}
}

// parseInts reads a comma-separated list of whole numbers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
