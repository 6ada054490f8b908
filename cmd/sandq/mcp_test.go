package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestMCPRefusesBadFlags: each combination sandq mcp cannot serve is
// refused before anything is reached, naming the flag at fault.
func TestMCPRefusesBadFlags(t *testing.T) {
	auth := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(auth, []byte(`{"tenants":{"t":{"queues":["*"]}},"tokens":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ args, want string }{
		{"mcp --listen 127.0.0.1:0", "--listen 127.0.0.1:0: the HTTP transport needs --auth-config"},
		{"mcp --auth-config " + auth, "--auth-config is for the HTTP transport"},
		{"--server http://127.0.0.1:1 mcp", "--server: sandq mcp submits jobs through Redis and S3 itself"},
		{"mcp --max-wait 10ms", "--max-wait 10ms: under the minimum of 1s"},
		{"mcp extra", `takes no arguments (got "extra")`},
		{"mcp --listen 127.0.0.1:0 --auth-config " + auth + ".missing", "auth config"},
	} {
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{mcpCommand()}, ExitErrHandler: func(*cli.Context, error) {}}
		// Redis is never reached: every case is refused before.
		err := app.Run(permuteArgs(app, append([]string{"sandq", "--redis-addr", "127.0.0.1:1"}, strings.Fields(c.args)...)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sandq %s: %v, want %q", c.args, err, c.want)
		}
	}
}
