package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/mcp"
)

func mcpCommand() *cli.Command {
	return &cli.Command{
		Name:  "mcp",
		Usage: "serve sandboxes to AI assistants over the Model Context Protocol: run_code, run_job_status and cancel_job, on standard input and output, or over streamable HTTP with --listen",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", EnvVars: env("MCP_LISTEN"), Usage: "serve streamable HTTP at this address (path /mcp), each request taking an API token of --auth-config; without it, serve one client on standard input and output"},
			&cli.StringFlag{Name: "auth-config", EnvVars: env("AUTH_CONFIG"), Usage: "tenants and token hashes (JSON, as sandq serve takes); needed with --listen"},
			&cli.StringFlag{Name: "image-dir", DefaultText: "STATE_DIR/images", EnvVars: env("IMAGE_DIR"), Usage: "where images' package lists are read from for the tools' descriptions, when this host has them"},
			&cli.DurationFlag{Name: "max-wait", DefaultText: mcp.DefaultMaxWait.String(), EnvVars: env("MCP_MAX_WAIT"), Usage: "longest a run_code call waits for its job; a longer job goes on running and run_job_status returns its result"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("sandq mcp takes no arguments (got %q)", c.Args().First())
			}
			if c.String("server") != "" {
				return fmt.Errorf("--server: sandq mcp submits jobs through Redis and S3 itself, not through an API server; to reach a shared deployment, point the assistant at the HTTP transport of a sandq mcp --listen there")
			}
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			listen := c.String("listen")
			var auth *api.AuthConfig
			if path := c.String("auth-config"); path != "" {
				if auth, err = api.LoadAuthConfig(path); err != nil {
					return err
				}
			}
			if listen != "" && auth == nil {
				return fmt.Errorf("--listen %s: the HTTP transport needs --auth-config (tenants and tokens; see sandq token create)", listen)
			}
			if listen == "" && auth != nil {
				return fmt.Errorf("--auth-config is for the HTTP transport (--listen); over standard input and output jobs are submitted as a direct producer")
			}
			if d := c.Duration("max-wait"); c.IsSet("max-wait") && d < time.Second {
				return fmt.Errorf("--max-wait %s: under the minimum of 1s", d)
			}
			logger := newLogger(c)
			store, err := newStore(cfg)
			if err != nil {
				return err
			}
			client, err := jobs.NewClient(cfg, store, logger)
			if err != nil {
				return err
			}
			defer client.Close()
			imageDir := c.String("image-dir")
			if imageDir == "" {
				imageDir = cfg.Worker.ImageDir
			}
			ctx, stop := interruptible(c)
			defer stop()
			startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			srv, err := mcp.New(startCtx, mcp.Config{
				Client: client, ImageDir: imageDir, MaxWait: c.Duration("max-wait"), Auth: auth, Version: c.App.Version, Logger: logger,
			})
			cancel()
			if err != nil {
				return err
			}
			if listen == "" {
				return srv.RunStdio(ctx)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			mux := http.NewServeMux()
			mux.Handle("/mcp", srv.Handler())
			logger.Info("serving MCP", "url", "http://"+ln.Addr().String()+"/mcp", "queue", srv.Sandbox().Queue)
			return serveHTTP(ctx, ln, mux)
		},
	}
}
