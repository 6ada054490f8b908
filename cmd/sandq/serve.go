package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the job API at /v1, the asynqmon dashboard at /monitoring, metrics at /metrics and /healthz",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: defaultListen, EnvVars: env("LISTEN"), Usage: "address to serve on"},
			&cli.StringFlag{Name: "auth-config", EnvVars: env("AUTH_CONFIG"), Usage: "tenants and token hashes (JSON); without it the job API refuses every request"},
			&cli.StringFlag{Name: "prometheus-url", EnvVars: env("PROMETHEUS_URL"), Usage: "Prometheus that asynqmon's charts query"},
			&cli.BoolFlag{Name: "open-dashboard", EnvVars: env("OPEN_DASHBOARD"), Usage: "serve the dashboard without a token to clients on this host (loopback, no proxy headers); needs a loopback --listen address. Without it the dashboard takes an operator token"},
			&cli.StringSliceFlag{Name: "allowed-hosts", EnvVars: env("ALLOWED_HOSTS"), Usage: "more names (host or host:port; without a port, any) clients reach the server by; given, the whole server but /healthz answers only its names, otherwise only the dashboard checks them. The listen address and localhost, 127.0.0.1 and [::1] (any port) are always allowed"},
			&cli.DurationFlag{Name: "body-idle-timeout", DefaultText: api.DefaultBodyIdleTimeout.String(), EnvVars: env("BODY_IDLE_TIMEOUT"), Usage: "cut a request whose body makes no progress for this long (408)"},
			&cli.DurationFlag{Name: "body-timeout", DefaultText: api.DefaultBodyTimeout.String(), EnvVars: env("BODY_TIMEOUT"), Usage: "cut a request whose body has not all arrived this long after it began (408); at most " + hours(jobs.ReservationTTL)},
			&cli.DurationFlag{Name: "write-timeout", DefaultText: api.DefaultWriteTimeout.String(), EnvVars: env("WRITE_TIMEOUT"), Usage: "cut a response (but an event stream) the client has not read this long after it began"},
			&cli.DurationFlag{Name: "stream-write-timeout", DefaultText: api.DefaultStreamWriteTimeout.String(), EnvVars: env("STREAM_WRITE_TIMEOUT"), Usage: "end an event stream when one of its writes takes this long"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			logger := newLogger(c)
			var auth *api.AuthConfig
			if path := c.String("auth-config"); path != "" {
				if auth, err = api.LoadAuthConfig(path); err != nil {
					return err
				}
			}
			store, err := newStore(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			loopback := ln.Addr().(*net.TCPAddr).IP.IsLoopback()
			if !loopback && auth == nil {
				ln.Close()
				return fmt.Errorf("--listen %s: a server reachable from other hosts needs --auth-config (tenants and tokens; see sandq token create)", c.String("listen"))
			}
			open := c.Bool("open-dashboard")
			if open && !loopback {
				ln.Close()
				return fmt.Errorf("--open-dashboard: the server listens on %s, reachable from other hosts; an open dashboard is for a server on loopback only (the dashboard takes an operator token otherwise)", c.String("listen"))
			}
			extra := c.StringSlice("allowed-hosts")
			if err := api.CheckHosts(extra); err != nil {
				ln.Close()
				return fmt.Errorf("--allowed-hosts: %w", err)
			}
			hosts := append(api.DefaultHosts(c.String("listen"), ln.Addr()), extra...)
			s, err := api.New(api.Config{
				Jobs: cfg, Store: store, Auth: auth, OpenMonitoring: open, PrometheusURL: c.String("prometheus-url"), Logger: logger,
				Hosts: hosts, StrictHosts: len(extra) > 0,
				Timeouts: api.Timeouts{
					BodyIdle: c.Duration("body-idle-timeout"), Body: c.Duration("body-timeout"),
					Write: c.Duration("write-timeout"), StreamWrite: c.Duration("stream-write-timeout"),
				},
			})
			if err != nil {
				ln.Close()
				return err
			}
			defer s.Close()
			// Headers and idle connections are cut by the server; bodies
			// and responses by the handler's per-request deadlines
			// (--body-idle-timeout, --body-timeout, --write-timeout,
			// --stream-write-timeout), so that uploads and event streams
			// last as long as they need and no longer.
			ctx, stop := interruptible(c)
			defer stop()
			base := "http://" + ln.Addr().String()
			logger.Info("serving", "api", base+"/v1/jobs", "monitoring", base+"/monitoring/", "metrics", base+"/metrics", "monitoring_open", open, "hosts", hosts)
			return serveHTTP(ctx, ln, s)
		},
	}
}

// serveHTTP serves h on ln until ctx ends, then shuts the server down,
// giving requests in flight 10s. The server cuts slow headers and idle
// connections; the rest is the handler's.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
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
					return err
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
