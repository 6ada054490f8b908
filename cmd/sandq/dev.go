package main

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/devstack/sandqdev"
)

// devStopAllowance is what the dev worker gets after its shutdown grace to
// hand its jobs back before it is killed.
const devStopAllowance = 40 * time.Second

func devCommand() *cli.Command {
	return &cli.Command{
		Name:  "dev",
		Usage: "run Redis, MinIO and one worker on this host, with all data under one directory",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", EnvVars: env("DEV_DIR"), Usage: "where the stack keeps its data (default: $XDG_DATA_HOME/sandq/dev)"},
			&cli.IntFlag{Name: "minio-console-port", Value: 9001, Usage: "port of MinIO's web console"},
			// The worker's own variables, so that a setting reaches the
			// worker the same way whether it came as a flag of dev or from
			// the environment.
			&cli.BoolFlag{Name: "snapshots", EnvVars: env("SNAPSHOTS"), Usage: "the worker starts python jobs from snapshot templates (sandq worker --snapshots)"},
			&cli.IntFlag{Name: "snapshot-pool", EnvVars: env("SNAPSHOT_POOL"), Usage: "with --snapshots, sandboxes per template the worker keeps restored ahead of demand (sandq worker --snapshot-pool)"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			redisPort, err := portOf(cfg.RedisAddr)
			if err != nil {
				return fmt.Errorf("--redis-addr: %w", err)
			}
			minioPort, err := portOf(cfg.Storage.Endpoint)
			if err != nil {
				return fmt.Errorf("--s3-endpoint: %w", err)
			}
			workerEnv, err := devWorkerEnv(c)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			// The children get this command line's settings through the
			// environment; the worker's and server's own settings are
			// theirs (SANDQ_*), read here only to say where things are.
			listen := cmp.Or(os.Getenv("SANDQ_LISTEN"), defaultListen)
			ctx, stop := interruptible(c)
			defer stop()
			dev, err := sandqdev.Start(ctx, sandqdev.Options{
				Dir: c.String("data-dir"), Sandq: self, Env: setGlobalsAsEnv(c), WorkerEnv: workerEnv,
				RedisPort: redisPort, MinioPort: minioPort, MinioConsolePort: c.Int("minio-console-port"),
				AccessKey: cfg.Storage.AccessKey, SecretKey: cfg.Storage.SecretKey, Bucket: cfg.Storage.Bucket, ExpiryDays: cfg.ObjectExpiryDays(),
				Listen: listen, EgressConfig: os.Getenv("SANDQ_EGRESS_CONFIG"), WebhookConfig: os.Getenv("SANDQ_WEBHOOK_CONFIG"), AuthConfig: os.Getenv("SANDQ_AUTH_CONFIG"),
				WorkerStopTimeout: cfg.Worker.ShutdownGrace + devStopAllowance, Logger: newLogger(c),
			})
			if err != nil {
				return err
			}
			printDev(c, dev, cfg.Storage.Bucket, cfg.Storage.AccessKey, cmp.Or(os.Getenv("SANDQ_METRICS_ADDR"), defaultMetricsAddr), listen)
			err = dev.Wait(ctx)
			if serr := dev.Stop(); serr != nil {
				newLogger(c).Warn("stopping the dev stack", "err", serr)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "sandq dev stopped")
			return nil
		},
	}
}

// devWorkerEnv is the worker's settings from dev's own flags, as the
// worker's SANDQ_* variables. It refuses what the worker would refuse
// before anything starts, rather than after Redis and MinIO have.
func devWorkerEnv(c *cli.Context) ([]string, error) {
	snapshots, pool := c.Bool("snapshots"), c.Int("snapshot-pool")
	if pool < 0 || pool > executor.MaxSnapshotPool {
		return nil, fmt.Errorf("--snapshot-pool %d: want 0 (off) to %d", pool, executor.MaxSnapshotPool)
	}
	if pool > 0 && !snapshots {
		return nil, errors.New("--snapshot-pool needs --snapshots")
	}
	var out []string
	if snapshots {
		out = append(out, "SANDQ_SNAPSHOTS=true")
	}
	if pool > 0 {
		out = append(out, "SANDQ_SNAPSHOT_POOL="+strconv.Itoa(pool))
	}
	return out, nil
}

// printDev says where everything of a started dev stack is.
func printDev(c *cli.Context, dev *sandqdev.Dev, bucket, rootUser, metricsAddr, listen string) {
	token, tokenNote := "(see "+dev.AuthConfig+")", ""
	if dev.WroteAuthConfig {
		token, tokenNote = dev.Token, "(in "+dev.TokenFile+")"
	}
	secret, hookNote := "(see "+dev.WebhookConfig+")", "(from "+dev.WebhookConfig+")"
	if dev.WroteWebhookConfig {
		secret, hookNote = dev.WebhookSecrets, "(private URLs allowed)"
	}
	dashNote := "(operator token: the dev token as basic-auth password)"
	if dev.OpenDashboard {
		dashNote = "(open to this host)"
	}
	fmt.Fprintf(c.App.Writer, `sandq dev is running (Ctrl-C stops it)
  redis          %s
  minio (S3)     %s  bucket %s
  minio console  http://%s  (user %s)
  s3 users       worker %s, api %s (limited to the bucket; secrets in %s)
  worker         pid %d, log %s, metrics http://%s/metrics
  api            http://%s/v1/jobs  token %s %s
                 SANDQ_SERVER=http://%s SANDQ_TOKEN=<token> sandq enqueue ... --wait
  asynqmon       http://%s/monitoring/ %s
  network policy %s
  webhooks       secret %s %s
                 receiver: go run ./examples/webhook_receiver --secret %s
  data           %s
`, dev.RedisAddr, dev.MinioAddr, bucket, dev.MinioConsoleAddr, rootUser,
		dev.Access.Worker.AccessKey, dev.Access.Producer.AccessKey, dev.AccessFile(bucket), dev.WorkerPID, dev.WorkerLog, metricsAddr,
		listen, token, tokenNote, listen, listen, dashNote, dev.EgressConfig, secret, hookNote, secret, dev.Dir)
	if c.Bool("snapshots") {
		fmt.Fprintf(c.App.Writer, "  snapshots      on, restore pool %d: the worker builds its templates before it takes jobs (see its log)\n", c.Int("snapshot-pool"))
	}
}

func portOf(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}
