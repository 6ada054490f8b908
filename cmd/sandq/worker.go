package main

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
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
			if err := cfg.CheckImages(logger); err != nil {
				return cli.Exit(err, exitError)
			}
			store, err := newStore(cfg)
			if err != nil {
				return cli.Exit(err, exitError)
			}
			if err := store.EnsureBucket(ctx); err != nil {
				if errors.Is(err, storage.ErrAccessDenied) {
					err = fmt.Errorf("%w (make the bucket with `sandq s3 setup` and the store's admin credentials)", err)
				}
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
			// MinIO's root user stays in this process, for bootstrap: the
			// bucket, its expiry rule, and a user per role limited to the
			// bucket. The worker and the API server get those users.
			s3Users, err := stack.ProvisionBucket(ctx, cfg.Storage.Bucket, devstack.ProvisionOptions{ExpiryDays: cfg.ObjectExpiryDays()})
			if err != nil {
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
			worker.Env = append(worker.Env, "SANDQ_S3_ACCESS_KEY="+s3Users.Worker.AccessKey, "SANDQ_S3_SECRET_KEY="+s3Users.Worker.SecretKey)
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
			server.Env = append(server.Env, "SANDQ_S3_ACCESS_KEY="+s3Users.Producer.AccessKey, "SANDQ_S3_SECRET_KEY="+s3Users.Producer.SecretKey)
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
			// The dashboard opens without a token to this host's own
			// clients when the server is on loopback; from elsewhere it
			// takes the token.
			dashNote := "(operator token: the dev token as basic-auth password)"
			if devLoopback(listen) {
				server.Env = append(server.Env, "SANDQ_OPEN_DASHBOARD=true")
				dashNote = "(open to this host)"
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
  s3 users       worker %s, api %s (limited to the bucket; secrets in %s)
  worker         pid %d, log %s, metrics http://%s/metrics
  api            http://%s/v1/jobs  token %s %s
                 SANDQ_SERVER=http://%s SANDQ_TOKEN=<token> sandq enqueue ... --wait
  asynqmon       http://%s/monitoring/ %s
  network policy %s
  webhooks       secret %s %s
                 receiver: go run ./examples/webhook_receiver --secret %s
  data           %s
`, stack.RedisAddr, stack.MinioAddr, cfg.Storage.Bucket, stack.MinioConsoleAddr, cfg.Storage.AccessKey,
				s3Users.Worker.AccessKey, s3Users.Producer.AccessKey, stack.AccessFile(cfg.Storage.Bucket), worker.Process.Pid, workerLog, metricsAddr, listen, token, tokenNote, listen, listen, dashNote, policy, secret, hookNote, secret, dir)
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

// devWebhookConfig writes (once) the dev stack's webhook settings: a
// signing secret for every queue (jobs from the CLI), one for the API's
// tenant "dev" (a tenant's jobs are signed with its own secret only), both
// kept across runs, and private URLs allowed so a receiver on this machine
// works. It returns the two secrets comma-separated, as
// examples/webhook_receiver takes them.
func devWebhookConfig(path string) (string, error) {
	var c struct {
		Secrets       map[string][]string `json:"secrets"`
		TenantSecrets map[string][]string `json:"tenant_secrets"`
	}
	file := map[string]any{}
	b, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(b, &c) == nil && json.Unmarshal(b, &file) == nil && len(c.Secrets["*"]) > 0 {
		if len(c.TenantSecrets["dev"]) > 0 {
			return c.Secrets["*"][0] + "," + c.TenantSecrets["dev"][0], nil
		}
		// A file from before tenant secrets: "dev" gets one, the rest stays.
	} else {
		secret, err := webhook.NewSecret()
		if err != nil {
			return "", err
		}
		c.Secrets = map[string][]string{"*": {secret}}
		file = map[string]any{"secrets": c.Secrets, "allow_private": true}
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return "", err
	}
	if c.TenantSecrets == nil {
		c.TenantSecrets = map[string][]string{}
	}
	c.TenantSecrets["dev"] = []string{secret}
	file["tenant_secrets"] = c.TenantSecrets
	b, _ = json.MarshalIndent(file, "", "  ")
	return c.Secrets["*"][0] + "," + secret, os.WriteFile(path, append(b, '\n'), 0o600)
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

// devLoopback reports whether the dev server's address is on loopback
// only: a loopback IP or localhost.
func devLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func portOf(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}
