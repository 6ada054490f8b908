package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// TestMemoryBudgetFlag: --memory-budget and SANDQ_MEMORY_BUDGET reach the
// worker config, the default is jobs.DefaultMemoryBudget, and a bad value
// is refused naming the flag.
func TestMemoryBudgetFlag(t *testing.T) {
	load := func(args string) (jobs.Config, error) {
		var got jobs.Config
		var gotErr error
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
			Name: "worker", Flags: workerFlags(),
			Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
		}}}
		if err := app.Run(strings.Fields(args)); err != nil {
			t.Fatal(err)
		}
		return got, gotErr
	}
	cases := []struct {
		args, env string
		want      jobs.MemoryBudget
	}{
		{"sandq worker", "", jobs.DefaultMemoryBudget},
		{"sandq worker --memory-budget 0.5", "", jobs.MemoryBudget{Fraction: 0.5}},
		{"sandq worker --memory-budget 60%", "", jobs.MemoryBudget{Fraction: 0.6}},
		{"sandq worker --memory-budget 12GiB", "", jobs.MemoryBudget{Bytes: 12 << 30}},
		{"sandq worker", "16GiB", jobs.MemoryBudget{Bytes: 16 << 30}},
		{"sandq worker --memory-budget 0.25", "16GiB", jobs.MemoryBudget{Fraction: 0.25}},
	}
	for _, c := range cases {
		t.Run(c.args+" env "+c.env, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("SANDQ_MEMORY_BUDGET", c.env)
			}
			got, err := load(c.args)
			if err != nil || got.Worker.MemoryBudget != c.want {
				t.Errorf("budget %+v, %v; want %+v", got.Worker.MemoryBudget, err, c.want)
			}
		})
	}
	for _, bad := range []string{"lots", "0", "150%", "1MiB"} {
		if _, err := load("sandq worker --memory-budget " + bad); err == nil || !strings.Contains(err.Error(), "memory budget") {
			t.Errorf("--memory-budget %s: %v", bad, err)
		}
	}
}
