package main

import (
	"context"
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
		Usage: "serve the asynqmon dashboard at /monitoring, queue metrics at /metrics and /healthz",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8080", EnvVars: env("LISTEN"), Usage: "address to serve on"},
			&cli.StringFlag{Name: "prometheus-url", EnvVars: env("PROMETHEUS_URL"), Usage: "Prometheus that asynqmon's charts query"},
			&cli.BoolFlag{Name: "insecure-public", Usage: "serve on a non-loopback address although the server has no authentication yet"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			logger := newLogger(c)
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return cli.Exit(fmt.Errorf("--listen: %w", err), exitError)
			}
			if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() && !c.Bool("insecure-public") {
				ln.Close()
				return cli.Exit(fmt.Errorf("--listen %s: the server has no authentication yet, so it serves on loopback only (put an authenticating proxy in front, or pass --insecure-public)", c.String("listen")), exitError)
			}
			s := api.New(api.Config{Redis: cfg.RedisOpt(), PrometheusURL: c.String("prometheus-url"), Logger: logger})
			defer s.Close()
			srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(sctx)
			}()
			logger.Info("serving", "monitoring", "http://"+ln.Addr().String()+"/monitoring/", "metrics", "http://"+ln.Addr().String()+"/metrics")
			if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
				return cli.Exit(err, exitError)
			}
			return nil
		},
	}
}
