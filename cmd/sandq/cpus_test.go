package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// --cpus reaches the submission as asked; 0, negative, non-finite and
// non-numbers are refused before anything is uploaded, naming the flag.
func TestEnqueueCPUsFlag(t *testing.T) {
	parse := func(args ...string) (jobs.Submission, error) { t.Helper(); return runEnqueueFlags(t, args...) }
	sub, err := parse()
	if err != nil || sub.Limits.CPUs != nil {
		t.Errorf("no --cpus: %v, %v; want none asked (the queue's default)", sub.Limits.CPUs, err)
	}
	for in, want := range map[string]float64{"0.5": 0.5, "2": 2, "0.25": 0.25} {
		sub, err := parse("--cpus", in)
		if err != nil || sub.Limits.CPUs == nil || *sub.Limits.CPUs != want {
			t.Errorf("--cpus %s: %v, %v", in, sub.Limits.CPUs, err)
		}
	}
	for in, want := range map[string]string{
		"0": "must be more than 0", "-1": "must be more than 0", "NaN": "not a number", "+Inf": "not a number",
		"half": "not a number of CPUs", "": "not a number of CPUs", "0.001": "under the minimum",
	} {
		_, err := parse("--cpus", in)
		if err == nil || !strings.HasPrefix(err.Error(), "--cpus: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("--cpus %q: %v, want a refusal saying %q", in, err, want)
		}
	}
}

// --default-cpus and --max-cpus (and their variables) reach the config; a
// default over the maximum and a bad number are refused.
func TestCPUsConfigFlags(t *testing.T) {
	load := func(args ...string) (jobs.Config, error) {
		t.Helper()
		var got jobs.Config
		var gotErr error
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
			Name: "worker", Flags: workerFlags(),
			Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
		}}}
		if err := app.Run(append([]string{"sandq"}, args...)); err != nil {
			t.Fatal(err)
		}
		return got, gotErr
	}
	got, err := load("--default-cpus", "0.5", "--max-cpus", "1", "worker")
	if err != nil || got.DefaultLimits.CPUs != 0.5 || got.MaxLimits.CPUs != 1 {
		t.Errorf("flags: default %v max %v, %v", got.DefaultLimits.CPUs, got.MaxLimits.CPUs, err)
	}
	t.Setenv("SANDQ_MAX_CPUS", "0.5")
	if got, err := load("worker"); err != nil || got.MaxLimits.CPUs != 0.5 || got.DefaultLimits.CPUs != 0.5 {
		t.Errorf("SANDQ_MAX_CPUS=0.5: default %v max %v, %v; want both 0.5", got.DefaultLimits.CPUs, got.MaxLimits.CPUs, err)
	}
	if _, err := load("--default-cpus", "2", "--max-cpus", "1", "worker"); err == nil || !strings.Contains(err.Error(), "default cpus 2 is over the maximum 1") {
		t.Errorf("default over the maximum: %v", err)
	}
	if _, err := load("--max-cpus", "0", "worker"); err == nil || !strings.Contains(err.Error(), "--max-cpus: ") {
		t.Errorf("--max-cpus 0: %v", err)
	}
}

// The human status shows the CPU time a job used beside its limit.
func TestHumanOutputShowsCPU(t *testing.T) {
	cpu := 0.921
	var out bytes.Buffer
	printHuman(&out, &jobs.JobStatus{ID: "job-1", Queue: "default", State: jobs.StateDone, Result: &jobs.Result{
		Status: jobs.StatusSucceeded, DurationMS: 3847, CPUSeconds: &cpu, Limits: jobs.LimitsDoc{CPUs: 0.25}, Attempt: 1,
	}})
	if want := "cpu      0.921s used (limit: --cpus 0.25)\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output %q, want a line %q", out.String(), want)
	}
}
