package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the job API at /v1, the asynqmon dashboard at /monitoring, metrics at /metrics and /healthz",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8080", EnvVars: env("LISTEN"), Usage: "address to serve on"},
			&cli.StringFlag{Name: "auth-config", EnvVars: env("AUTH_CONFIG"), Usage: "tenants and token hashes (JSON); without it the job API refuses every request"},
			&cli.StringFlag{Name: "prometheus-url", EnvVars: env("PROMETHEUS_URL"), Usage: "Prometheus that asynqmon's charts query"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			logger := newLogger(c)
			var auth *api.AuthConfig
			if path := c.String("auth-config"); path != "" {
				if auth, err = api.LoadAuthConfig(path); err != nil {
					return cli.Exit(err, exitError)
				}
			}
			store, err := newStore(cfg)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return cli.Exit(fmt.Errorf("--listen: %w", err), exitError)
			}
			loopback := ln.Addr().(*net.TCPAddr).IP.IsLoopback()
			if !loopback && auth == nil {
				ln.Close()
				return cli.Exit(fmt.Errorf("--listen %s: a server reachable from other hosts needs --auth-config (tenants and tokens; see sandq token create)", c.String("listen")), exitError)
			}
			s, err := api.New(api.Config{Jobs: cfg, Store: store, Auth: auth, OpenMonitoring: loopback, PrometheusURL: c.String("prometheus-url"), Logger: logger})
			if err != nil {
				ln.Close()
				return cli.Exit(err, exitError)
			}
			defer s.Close()
			// No write timeout: uploads and event streams last as long as
			// they need; idle connections and slow headers are cut.
			srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			base := "http://" + ln.Addr().String()
			logger.Info("serving", "api", base+"/v1/jobs", "monitoring", base+"/monitoring/", "metrics", base+"/metrics", "monitoring_open", loopback)
			if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
				return cli.Exit(err, exitError)
			}
			return nil
		},
	}
}

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "manage API tokens",
		Subcommands: []*cli.Command{{
			Name:  "create",
			Usage: "print a new API token for a tenant and the entry to add to the auth config's tokens",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "tenant", Required: true, Usage: "tenant the token acts for"},
				&cli.StringFlag{Name: "name", Usage: "a label for the token (who or what uses it)"},
				&cli.BoolFlag{Name: "json", Usage: "print {token, entry} as JSON"},
			},
			Action: func(c *cli.Context) error {
				tok, entry, err := api.NewToken(c.String("tenant"), c.String("name"))
				if err != nil {
					return cli.Exit(err, exitError)
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, map[string]any{"token": tok, "entry": entry})
				}
				line, _ := json.Marshal(entry)
				fmt.Fprintf(c.App.Writer, "token (shown once; the server keeps only its hash):\n  %s\nadd to \"tokens\" in the auth config (--auth-config):\n  %s\n", tok, line)
				return nil
			},
		}},
	}
}
