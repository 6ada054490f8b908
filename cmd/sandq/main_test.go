package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
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
		Action: func(c *cli.Context) error { got, gotErr = loadConfig(c); return nil },
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
