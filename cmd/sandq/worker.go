package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/devstack"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

func workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "run jobs from Redis in fresh gVisor sandboxes (as root)",
		Flags: workerFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			logger := newLogger(c)
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			// Before the runner starts (and sweeps): every image it may run.
			if err := cfg.CheckImages(); err != nil {
				return cli.Exit(err, exitError)
			}
			store, err := newStore(cfg)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			if err := store.EnsureBucket(ctx); err != nil {
				return cli.Exit(fmt.Errorf("object store at %s: %w", cfg.Storage.Endpoint, err), exitError)
			}
			rc := executor.RunscConfig{Runsc: cfg.Worker.Runsc, Platform: cfg.Worker.Platform, StateDir: cfg.Worker.StateDir, Logger: logger}
			if c.String("egress-config") != "" {
				pool, err := netip.ParsePrefix(cfg.Egress.Pool)
				if err != nil {
					return cli.Exit(fmt.Errorf("egress pool: %w", err), exitError)
				}
				rc.Network = &executor.NetworkConfig{Pool: pool}
			}
			runner, err := executor.NewRunscRunner(ctx, rc)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			defer runner.Close(context.Background())
			w, err := jobs.NewWorker(cfg, runner, store, logger)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			if err := w.Start(ctx); err != nil {
				return cli.Exit(err, exitError)
			}
			if addr := c.String("metrics-addr"); addr != "" {
				mux := http.NewServeMux()
				mux.Handle("/metrics", w.Metrics().Handler())
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					w.Shutdown()
					return cli.Exit(fmt.Errorf("--metrics-addr: %w", err), exitError)
				}
				srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
				go srv.Serve(ln)
				defer srv.Close()
				logger.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
			}
			<-ctx.Done()
			logger.Info("stopping: running jobs get the grace period", "grace", cfg.Worker.ShutdownGrace)
			w.Shutdown()
			return nil
		},
	}
}

func devCommand() *cli.Command {
	return &cli.Command{
		Name:  "dev",
		Usage: "run Redis, MinIO and one worker on this host, with all data under one directory",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", EnvVars: env("DEV_DIR"), Usage: "where the stack keeps its data (default: $XDG_DATA_HOME/sandq/dev)"},
			&cli.IntFlag{Name: "minio-console-port", Value: 9001, Usage: "port of MinIO's web console"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			logger := newLogger(c)
			dir := c.String("data-dir")
			if dir == "" {
				base := os.Getenv("XDG_DATA_HOME")
				if base == "" {
					home, _ := os.UserHomeDir()
					base = filepath.Join(home, ".local", "share")
				}
				dir = filepath.Join(base, "sandq", "dev")
			}
			redisPort, err := portOf(cfg.RedisAddr)
			if err != nil {
				return cli.Exit(fmt.Errorf("--redis-addr: %w", err), exitError)
			}
			minioPort, err := portOf(cfg.Storage.Endpoint)
			if err != nil {
				return cli.Exit(fmt.Errorf("--s3-endpoint: %w", err), exitError)
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			stack, err := devstack.Start(ctx, devstack.Options{
				Dir: dir, RedisPort: redisPort, MinioPort: minioPort, MinioConsolePort: c.Int("minio-console-port"),
				AccessKey: cfg.Storage.AccessKey, SecretKey: cfg.Storage.SecretKey, AppendOnly: true, Logger: logger,
			})
			if err != nil {
				return cli.Exit(err, exitError)
			}
			defer stack.Stop()
			store, err := newStore(cfg)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			if err := store.EnsureBucket(ctx); err != nil {
				return cli.Exit(err, exitError)
			}
			self, err := os.Executable()
			if err != nil {
				return cli.Exit(err, exitError)
			}
			workerLog := filepath.Join(dir, "logs", "worker.log")
			logf, err := os.OpenFile(workerLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			defer logf.Close()
			// The worker gets this process's flags through the environment,
			// and a network policy letting default-queue jobs reach the
			// built-in groups unless one is configured.
			worker := exec.Command(self, "worker")
			worker.Env = append(os.Environ(), setGlobalsAsEnv(c)...)
			policy := os.Getenv("SANDQ_EGRESS_CONFIG")
			if policy == "" {
				policy = filepath.Join(dir, "egress.json")
				if err := os.WriteFile(policy, []byte(devEgressPolicy), 0o644); err != nil {
					return cli.Exit(err, exitError)
				}
				worker.Env = append(worker.Env, "SANDQ_EGRESS_CONFIG="+policy)
			}
			hooks := os.Getenv("SANDQ_WEBHOOK_CONFIG")
			secret, hookNote := "(see "+hooks+")", "(from "+hooks+")"
			if hooks == "" {
				hookNote = "(private URLs allowed)"
				hooks = filepath.Join(dir, "webhook.json")
				if secret, err = devWebhookConfig(hooks); err != nil {
					return cli.Exit(err, exitError)
				}
				worker.Env = append(worker.Env, "SANDQ_WEBHOOK_CONFIG="+hooks)
			}
			worker.Stdout, worker.Stderr = logf, logf
			worker.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
			if err := worker.Start(); err != nil {
				return cli.Exit(fmt.Errorf("start worker: %w", err), exitError)
			}
			metricsAddr := os.Getenv("SANDQ_METRICS_ADDR")
			if metricsAddr == "" {
				metricsAddr = "127.0.0.1:9464"
			}
			exited := make(chan error, 1)
			go func() { exited <- worker.Wait() }()
			// The server (asynqmon, metrics), on loopback.
			listen := os.Getenv("SANDQ_LISTEN")
			if listen == "" {
				listen = "127.0.0.1:8080"
			}
			server := exec.Command(self, "serve")
			server.Env = append(os.Environ(), setGlobalsAsEnv(c)...)
			authConfig := os.Getenv("SANDQ_AUTH_CONFIG")
			token, tokenNote := "(see "+authConfig+")", ""
			if authConfig == "" {
				authConfig = filepath.Join(dir, "auth.json")
				tokenNote = "(in " + filepath.Join(dir, "dev-token") + ")"
				if token, err = devAuthConfig(authConfig, filepath.Join(dir, "dev-token")); err != nil {
					worker.Process.Signal(syscall.SIGTERM)
					<-exited
					return cli.Exit(err, exitError)
				}
				server.Env = append(server.Env, "SANDQ_AUTH_CONFIG="+authConfig)
			}
			server.Stdout, server.Stderr = logf, logf
			server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
			if err := server.Start(); err != nil {
				worker.Process.Signal(syscall.SIGTERM)
				<-exited
				return cli.Exit(fmt.Errorf("start server: %w", err), exitError)
			}
			defer func() {
				server.Process.Signal(syscall.SIGTERM)
				server.Wait()
			}()
			fmt.Fprintf(c.App.Writer, `sandq dev is running (Ctrl-C stops it)
  redis          %s
  minio (S3)     %s  bucket %s
  minio console  http://%s  (user %s)
  worker         pid %d, log %s, metrics http://%s/metrics
  api            http://%s/v1/jobs  token %s %s
                 SANDQ_SERVER=http://%s SANDQ_TOKEN=<token> sandq enqueue ... --wait
  asynqmon       http://%s/monitoring/
  network policy %s
  webhooks       secret %s %s
                 receiver: go run ./examples/webhook_receiver --secret %s
  data           %s
`, stack.RedisAddr, stack.MinioAddr, cfg.Storage.Bucket, stack.MinioConsoleAddr, cfg.Storage.AccessKey, worker.Process.Pid, workerLog, metricsAddr, listen, token, tokenNote, listen, listen, policy, secret, hookNote, secret, dir)
			select {
			case <-ctx.Done():
				worker.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(cfg.Worker.ShutdownGrace + 40*time.Second):
					worker.Process.Kill()
					<-exited
				}
				fmt.Fprintln(c.App.Writer, "sandq dev stopped")
				return nil
			case err := <-exited:
				return cli.Exit(fmt.Errorf("worker exited (%v); see %s", err, workerLog), exitError)
			}
		},
	}
}

// devEgressPolicy lets jobs on the default queue ask for the built-in
// groups; "default" means the Python and npm registries.
const devEgressPolicy = `{
  "queues": {
    "default": {"max": ["pypi", "npm", "github"], "default": ["pypi", "npm"]}
  }
}
`

// devWebhookConfig writes (once) the dev stack's webhook settings: one
// signing secret for every queue, kept across runs, and private URLs allowed
// so a receiver on this machine works. It returns the secret.
func devWebhookConfig(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		var c struct {
			Secrets map[string][]string `json:"secrets"`
		}
		if json.Unmarshal(b, &c) == nil && len(c.Secrets["*"]) > 0 {
			return c.Secrets["*"][0], nil
		}
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return "", err
	}
	b, _ := json.MarshalIndent(map[string]any{"secrets": map[string][]string{"*": {secret}}, "allow_private": true}, "", "  ")
	return secret, os.WriteFile(path, append(b, '\n'), 0o600)
}

// devAuthConfig writes (once) the dev stack's API auth: one tenant "dev"
// that may use every queue and open the dashboard, and its token, kept in
// tokenPath across runs. It returns the token.
func devAuthConfig(path, tokenPath string) (string, error) {
	if b, err := os.ReadFile(tokenPath); err == nil {
		tok := strings.TrimSpace(string(b))
		if cfg, err := api.LoadAuthConfig(path); err == nil {
			for _, e := range cfg.Tokens {
				if e.SHA256 == api.HashToken(tok) {
					return tok, nil
				}
			}
		}
	}
	tok, entry, err := api.NewToken("dev", "sandq dev")
	if err != nil {
		return "", err
	}
	cfg := api.AuthConfig{
		Tenants: map[string]api.Tenant{"dev": {Queues: []string{"*"}, Operator: true}},
		Tokens:  []api.TokenEntry{entry},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	return tok, os.WriteFile(tokenPath, []byte(tok+"\n"), 0o600)
}

func portOf(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}
