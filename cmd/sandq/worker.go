package main

import (
	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/worker"
)

func workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "run jobs from Redis in fresh gVisor sandboxes (as root)",
		Flags: workerFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := loadWorkerConfig(c)
			if err != nil {
				return err
			}
			logger := newLogger(c)
			ctx, stop := interruptible(c)
			defer stop()
			store, err := newStore(cfg)
			if err != nil {
				return err
			}
			return worker.Serve(ctx, cfg, store, worker.ServeOptions{
				Logger: logger, Networked: c.String("egress-config") != "", MetricsAddr: c.String("metrics-addr"),
			})
		},
	}
}
