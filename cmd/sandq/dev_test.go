package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs"
)

// TestDevSnapshotFlagsReachWorkerConfig runs `sandq dev`'s flag parsing,
// puts the worker environment it makes where the dev worker finds it (its
// process environment), and reads that with the worker's own flags: the
// worker's config has snapshots exactly when dev was asked for them. A pool
// without snapshots, or over the bound, is refused before anything starts.
func TestDevSnapshotFlagsReachWorkerConfig(t *testing.T) {
	for _, tc := range []struct {
		args string
		// env is the environment `sandq dev` runs in.
		env       map[string]string
		snapshots bool
		pool      int
		err       string
	}{
		{args: "sandq dev"},
		{args: "sandq dev --snapshots", snapshots: true},
		{args: "sandq dev --snapshots --snapshot-pool 2", snapshots: true, pool: 2},
		{args: "sandq dev --snapshot-pool 1", env: map[string]string{"SANDQ_SNAPSHOTS": "true"}, snapshots: true, pool: 1},
		{args: "sandq dev --snapshot-pool 2", err: "--snapshot-pool needs --snapshots"},
		{args: "sandq dev --snapshots --snapshot-pool 65", err: "--snapshot-pool 65: want 0 (off) to 64"},
		{args: "sandq dev --snapshots --snapshot-pool -1", err: "--snapshot-pool -1: want 0 (off) to 64"},
	} {
		t.Run(tc.args, func(t *testing.T) {
			for _, k := range []string{"SANDQ_SNAPSHOTS", "SANDQ_SNAPSHOT_POOL"} {
				t.Setenv(k, tc.env[k])
			}
			var workerEnv []string
			var devErr error
			dev := devCommand()
			dev.Action = func(c *cli.Context) error { workerEnv, devErr = devWorkerEnv(c); return nil }
			app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{dev}, ExitErrHandler: func(*cli.Context, error) {}}
			if err := app.Run(strings.Fields(tc.args)); err != nil {
				t.Fatal(err)
			}
			if tc.err != "" {
				if devErr == nil || devErr.Error() != tc.err {
					t.Fatalf("dev: error %v, want %q", devErr, tc.err)
				}
				return
			}
			if devErr != nil {
				t.Fatal(devErr)
			}
			// The dev worker's environment is dev's, then WorkerEnv.
			for _, kv := range workerEnv {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			got, err := workerConfigFrom(t, "sandq worker --state-dir /x --image-dir /imgs")
			if err != nil {
				t.Fatal(err)
			}
			if got.Worker.Snapshots != tc.snapshots || got.Worker.SnapshotPool != tc.pool {
				t.Errorf("worker env %q: worker config snapshots %v pool %d, want %v and %d", workerEnv, got.Worker.Snapshots, got.Worker.SnapshotPool, tc.snapshots, tc.pool)
			}
		})
	}
}

// workerConfigFrom is the config `sandq worker` reads from args and the
// process environment.
func workerConfigFrom(t *testing.T, args string) (jobs.Config, error) {
	t.Helper()
	var got jobs.Config
	var gotErr error
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
		Name: "worker", Flags: workerFlags(),
		Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
	}}, ExitErrHandler: func(*cli.Context, error) {}}
	if err := app.Run(strings.Fields(args)); err != nil {
		t.Fatal(err)
	}
	return got, gotErr
}
