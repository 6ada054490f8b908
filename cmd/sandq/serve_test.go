package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv"
)

// TestServeDashboardNeverOpenImplicitly runs `sandq serve` on loopback, as
// the README's reverse-proxy setup does: without --open-dashboard the
// dashboard takes an operator token; with it, it is open to local clients
// only, and only under the server's own host names.
func TestServeDashboardNeverOpenImplicitly(t *testing.T) {
	dir := t.TempDir()
	st := testenv.Services(t, testenv.ServicesOptions{AccessKey: "serve-test", SecretKey: "serve-test-secret"})
	tok, entry, err := api.NewToken("ops", "test")
	if err != nil {
		t.Fatal(err)
	}
	authPath := filepath.Join(dir, "auth.json")
	os.WriteFile(authPath, []byte(fmt.Sprintf(`{"tenants":{"ops":{"queues":["*"],"operator":true}},"tokens":[{"tenant":"ops","sha256":%q}]}`, entry.SHA256)), 0o600)

	// serve runs the command until the test ends and returns its address.
	serve := func(t *testing.T, args ...string) string {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ctx, cancel := context.WithCancel(context.Background())
		var runErr error
		exited := make(chan struct{})
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{serveCommand()}, ExitErrHandler: func(*cli.Context, error) {}, Writer: io.Discard}
		argv := append([]string{"sandq", "--redis-addr", st.RedisAddr, "--s3-endpoint", st.MinioAddr, "--s3-access-key", "serve-test", "--s3-secret-key", "serve-test-secret",
			"--log-level", "error", "serve", "--listen", addr, "--auth-config", authPath}, args...)
		go func() {
			runErr = app.RunContext(ctx, argv)
			close(exited)
		}()
		t.Cleanup(func() {
			cancel()
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				t.Error("serve did not stop")
			}
		})
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			select {
			case <-exited:
				t.Fatalf("serve %v exited: %v", args, runErr)
			default:
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				return addr
			}
			if time.Now().After(deadline) {
				t.Fatal("serve did not listen")
			}
		}
	}
	get := func(t *testing.T, url, host, bearer string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if host != "" {
			req.Host = host
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	t.Run("loopback without the flag", func(t *testing.T) {
		addr := serve(t)
		if c := get(t, "http://"+addr+"/monitoring/api/queues", "", ""); c != 401 {
			t.Errorf("dashboard of a loopback server without --open-dashboard, no token: %d, want 401", c)
		}
		if c := get(t, "http://"+addr+"/monitoring/api/queues", "", tok); c != 200 {
			t.Errorf("with an operator token: %d", c)
		}
		// The server's own names are accepted (loopback names on any port:
		// a port forward changes it); a rebound one is not.
		port := strings.Split(addr, ":")[1]
		for _, h := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port, "localhost:9999", "127.0.0.1"} {
			if c := get(t, "http://"+addr+"/monitoring/api/queues", h, tok); c != 200 {
				t.Errorf("Host %s: %d", h, c)
			}
		}
		if c := get(t, "http://"+addr+"/monitoring/api/queues", "evil.example:"+port, tok); c != 421 {
			t.Errorf("Host evil.example: %d, want 421", c)
		}
	})
	t.Run("--open-dashboard", func(t *testing.T) {
		addr := serve(t, "--open-dashboard")
		if c := get(t, "http://"+addr+"/monitoring/api/queues", "", ""); c != 200 {
			t.Errorf("open dashboard, no token: %d, want 200", c)
		}
		if c := get(t, "http://"+addr+"/monitoring/api/queues", "evil.example", ""); c != 421 {
			t.Errorf("open dashboard, Host evil.example: %d, want 421", c)
		}
	})
	t.Run("--allowed-hosts", func(t *testing.T) {
		addr := serve(t, "--allowed-hosts", "sandq.example.com,ops.example.com:8443")
		for h, want := range map[string]int{"sandq.example.com": 200, "SANDQ.example.com:443": 200, "ops.example.com:8443": 200, "ops.example.com": 421, "evil.example": 421, addr: 200} {
			if c := get(t, "http://"+addr+"/monitoring/api/queues", h, tok); c != want {
				t.Errorf("Host %s: %d, want %d", h, c, want)
			}
		}
		// Given, the names bind the whole server but /healthz.
		if c := get(t, "http://"+addr+"/v1/openapi.json", "evil.example", ""); c != 421 {
			t.Errorf("/v1/openapi.json, Host evil.example: %d, want 421", c)
		}
		if c := get(t, "http://"+addr+"/healthz", "10.1.2.3:8080", ""); c != 200 {
			t.Errorf("/healthz by address: %d, want 200", c)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{serveCommand()}, ExitErrHandler: func(*cli.Context, error) {}}
		err := app.Run([]string{"sandq", "serve", "--listen", "0.0.0.0:0", "--auth-config", authPath, "--open-dashboard"})
		if err == nil || !strings.Contains(err.Error(), "--open-dashboard") {
			t.Errorf("--open-dashboard on 0.0.0.0: %v", err)
		}
		err = app.Run([]string{"sandq", "serve", "--listen", "127.0.0.1:0", "--allowed-hosts", "bad host/x"})
		if err == nil || !strings.Contains(err.Error(), "--allowed-hosts") {
			t.Errorf("a bad --allowed-hosts: %v", err)
		}
	})
}
