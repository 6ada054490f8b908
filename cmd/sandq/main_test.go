package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/bench"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
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

// TestWorkerFlagsReachConfig runs the flag parsing of a worker-like command
// and checks every worker flag lands in the config.
func TestWorkerFlagsReachConfig(t *testing.T) {
	var got jobs.Config
	var gotErr error
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
		Name: "worker", Flags: workerFlags(),
		Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
	}}}
	args := "sandq --max-retry 0 --link-expiry 2h worker --concurrency 4 --queues a=2,b --state-dir /x --runsc /r --platform ptrace --image-dir /imgs --image py --log-size 1MiB --shutdown-grace 7s"
	if err := app.Run(strings.Fields(args)); err != nil || gotErr != nil {
		t.Fatal(err, gotErr)
	}
	w := got.Worker
	if w.Concurrency != 4 || w.Queues["a"] != 2 || w.Queues["b"] != 1 || w.StateDir != "/x" || w.Runsc != "/r" || w.Platform != "ptrace" ||
		w.ImageDir != "/imgs" || w.Image != "py" || w.LogBytes != 1<<20 || w.ShutdownGrace != 7*time.Second {
		t.Errorf("worker config %+v", w)
	}
	if got.MaxRetry != jobs.NoRetry || got.LinkExpiry != 2*time.Hour {
		t.Errorf("max retry %d link expiry %s", got.MaxRetry, got.LinkExpiry)
	}
}

func TestSetGlobalsAsEnv(t *testing.T) {
	var env []string
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
		Name: "dev", Action: func(c *cli.Context) error { env = setGlobalsAsEnv(c); return nil },
	}}}
	if err := app.Run(strings.Fields("sandq --redis-addr r:1 --link-expiry 2h --s3-secure dev")); err != nil {
		t.Fatal(err)
	}
	want := "SANDQ_REDIS_ADDR=r:1 SANDQ_S3_SECURE=true SANDQ_LINK_EXPIRY=2h0m0s"
	if strings.Join(env, " ") != want {
		t.Errorf("env %v, want %s", env, want)
	}
}

// TestServeRefusesPublicAddressWithoutAuth: the server has no
// authentication yet, so a non-loopback address is refused.
func TestServeRefusesPublicAddressWithoutAuth(t *testing.T) {
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{serveCommand()}, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run([]string{"sandq", "serve", "--listen", "0.0.0.0:0"})
	if err == nil || !strings.Contains(err.Error(), "needs --auth-config") {
		t.Fatalf("serve on 0.0.0.0: %v", err)
	}
}

// TestTokenCreate: the printed entry, put in an auth config, accepts the
// printed token and no other.
func TestTokenCreate(t *testing.T) {
	var out bytes.Buffer
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{tokenCommand()}, Writer: &out, ExitErrHandler: func(*cli.Context, error) {}}
	if err := app.Run([]string{"sandq", "token", "create", "--tenant", "acme", "--name", "ci", "--json"}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Token string         `json:"token"`
		Entry api.TokenEntry `json:"entry"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || !strings.HasPrefix(got.Token, api.TokenPrefix) || len(got.Token) != len(api.TokenPrefix)+43 {
		t.Fatalf("token create --json: %s (%v)", out.String(), err)
	}
	if got.Entry.Tenant != "acme" || got.Entry.Name != "ci" || got.Entry.SHA256 != api.HashToken(got.Token) || strings.Contains(out.String(), "\"sha256\": \""+got.Token) {
		t.Errorf("entry %+v", got.Entry)
	}
	cfg := api.AuthConfig{Tenants: map[string]api.Tenant{"acme": {Queues: []string{"default"}}}, Tokens: []api.TokenEntry{got.Entry}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := app.Run([]string{"sandq", "token", "create", "--tenant", "acme"}); err != nil || !strings.Contains(out.String(), `"tenant":"acme"`) {
		t.Errorf("token create: %v\n%s", err, out.String())
	}
	if err := app.Run([]string{"sandq", "token", "create", "--tenant", "no/slash"}); err == nil {
		t.Error("a bad tenant name was accepted")
	}
}

// TestUnsetFlagsLeaveConfigDefaults: a worker given no flags gets exactly
// jobs.Config.WithDefaults (but for the S3 settings, the command line's
// own), so no flag restates a default of the config; a flag set, or its
// variable, still reaches the config.
func TestUnsetFlagsLeaveConfigDefaults(t *testing.T) {
	load := func(args ...string) jobs.Config {
		t.Helper()
		var got jobs.Config
		var gotErr error
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{{
			Name: "worker", Flags: workerFlags(),
			Action: func(c *cli.Context) error { got, gotErr = loadWorkerConfig(c); return nil },
		}}}
		if err := app.Run(append([]string{"sandq"}, args...)); err != nil || gotErr != nil {
			t.Fatal(err, gotErr)
		}
		return got
	}
	want := jobs.Config{Storage: storage.Config{Endpoint: defaultS3Endpoint, AccessKey: defaultAccessKey, SecretKey: defaultSecretKey, Bucket: defaultBucket}}.WithDefaults()
	if got := load("worker"); !reflect.DeepEqual(got, want) {
		t.Errorf("no flags:\n got %+v\nwant %+v", got, want)
	}
	t.Setenv("SANDQ_MAX_RETRY", "0")
	t.Setenv("SANDQ_DEFAULT_MEMORY", "1GiB")
	got := load("--s3-region", "eu-1", "worker", "--queues", "q=3", "--max-result-size", "1MiB")
	if got.MaxRetry != jobs.NoRetry || got.DefaultLimits.Memory != 1<<30 || got.Storage.Region != "eu-1" || got.Worker.Queues["q"] != 3 || len(got.Worker.Queues) != 1 || got.MaxResultBytes != 1<<20 {
		t.Errorf("set: max retry %d, default memory %d, region %q, queues %v, max result %d", got.MaxRetry, got.DefaultLimits.Memory, got.Storage.Region, got.Worker.Queues, got.MaxResultBytes)
	}
}

// TestHelpShowsConfigDefaults: flags that leave their default to a
// package's config still show it in their help.
func TestHelpShowsConfigDefaults(t *testing.T) {
	help := map[string]string{}
	for _, cmd := range []string{"", "worker", "serve", "bench", "image build", "image import"} {
		var out bytes.Buffer
		app := newApp()
		app.Writer = &out
		if err := app.Run(append(append([]string{"sandq"}, strings.Fields(cmd)...), "--help")); err != nil {
			t.Fatal(err)
		}
		help[cmd] = out.String()
	}
	for _, c := range []struct{ cmd, flag, def string }{
		{"", "redis-addr", `"` + jobs.DefaultRedisAddr + `"`},
		{"", "s3-region", `"` + storage.DefaultRegion + `"`},
		{"", "default-memory", `"` + jobs.FormatSize(jobs.DefaultMemory) + `"`},
		{"", "max-output-files", fmt.Sprint(jobs.DefaultMaxOutputFiles)},
		{"", "max-retry", fmt.Sprint(jobs.DefaultMaxRetry)},
		{"", "result-retention", jobs.DefaultResultRetention.String()},
		{"worker", "queues", `"` + jobs.DefaultQueue + `=1"`},
		{"worker", "state-dir", `"` + executor.DefaultStateDir + `"`},
		{"worker", "platform", `"` + executor.DefaultPlatform + `"`},
		{"worker", "image-dir", "STATE_DIR/images"},
		{"worker", "log-size", `"` + jobs.FormatSize(jobs.DefaultLogSize) + `"`},
		{"worker", "live-output-size", `"` + jobs.FormatSize(jobs.DefaultLiveOutputSize) + `"`},
		{"worker", "memory-budget", `"` + jobs.DefaultMemoryBudget.String() + `"`},
		{"worker", "shutdown-grace", jobs.DefaultShutdownGrace.String()},
		{"serve", "body-timeout", api.DefaultBodyTimeout.String()},
		{"bench", "image-dir", `"` + image.DefaultDir + `"`},
		{"bench", "runsc", `"` + executor.DefaultRunsc + `"`},
		{"bench", "floor-runs", fmt.Sprint(bench.DefaultFloorRuns)},
		{"bench", "concurrency", `"1,2,4,8"`},
		{"image build", "suite", `"` + image.DefaultSuite + `"`},
		{"image import", "max-entries", fmt.Sprint(image.DefaultMaxImportEntries)},
	} {
		line := ""
		for _, l := range strings.Split(help[c.cmd], "\n") {
			if strings.Contains(l, "--"+c.flag+" value") {
				line = l
			}
		}
		if want := "(default: " + c.def + ")"; !strings.Contains(line, want) {
			t.Errorf("sandq %s --help: --%s shows no %s: %q", c.cmd, c.flag, want, line)
		}
	}
}

// TestBenchOptions: --quick presets a short run that flags set override;
// without it, flags not set are left to bench.Options.WithDefaults.
func TestBenchOptions(t *testing.T) {
	// What the flags say, not the environment (make test sets
	// SANDQ_IMAGE_DIR for the other tests).
	for _, e := range os.Environ() {
		if name, _, _ := strings.Cut(e, "="); strings.HasPrefix(name, "SANDQ_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	load := func(args string) bench.Options {
		t.Helper()
		var got bench.Options
		var gotErr error
		cmd := benchCommand()
		cmd.Action = func(c *cli.Context) error { got, gotErr = benchOptions(c); return nil }
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{cmd}}
		if err := app.Run(strings.Fields(args)); err != nil || gotErr != nil {
			t.Fatal(err, gotErr)
		}
		return got
	}
	if got := load("sandq bench"); !reflect.DeepEqual(got, bench.Options{}) {
		t.Errorf("no flags: %+v, want the zero options", got)
	}
	got := load("sandq bench --quick --floor-runs 5 --platform ptrace --image-dir /imgs")
	quick := bench.Quick(bench.Options{})
	if got.FloorRuns != 5 || got.LatencyJobs != quick.LatencyJobs || !slices.Equal(got.Concurrency, quick.Concurrency) || got.Platform != "ptrace" || got.ImageDir != "/imgs" || got.Runsc != "" {
		t.Errorf("--quick with flags: %+v", got)
	}
	if got := load("sandq bench --concurrency 3,5 --variant shell"); !slices.Equal(got.Concurrency, []int{3, 5}) || !slices.Equal(got.Variants, []string{"shell"}) {
		t.Errorf("lists: %+v", got)
	}
	if got := load("sandq bench --variant python,python-pandas --no-snapshots"); !got.NoSnapshots || !slices.Equal(got.Variants, []string{"python", "python-pandas"}) {
		t.Errorf("--variant python,python-pandas --no-snapshots: %+v", got)
	}
	if got := load("sandq bench --explain"); !got.Explain {
		t.Errorf("--explain: %+v", got)
	}
}
