// Package sandqdev runs what `sandq dev` runs on one host: Redis and MinIO
// (devstack), a bucket with a least-privilege user per role, and a sandq
// worker and API server as child processes, with settings for local use
// (a network policy, webhook secrets, an API token) written once under one
// directory and kept across runs. The command parses flags and prints;
// this package starts, watches and stops.
package sandqdev

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/internal/devstack"
)

// Options say where the stack lives and what its children get.
type Options struct {
	// Dir holds all data and logs. Default DefaultDir().
	Dir string
	// Sandq is the sandq binary run as `sandq worker` and `sandq serve`.
	Sandq string
	// Env is added to both children's environment: the parent's settings
	// as SANDQ_* variables.
	Env []string
	// WorkerEnv is added to the worker's environment only, after Env: the
	// worker's own settings that `sandq dev` takes as flags (such as
	// SANDQ_SNAPSHOTS).
	WorkerEnv []string
	// Ports on 127.0.0.1; 0 picks a free one.
	RedisPort, MinioPort, MinioConsolePort int
	// AccessKey and SecretKey are MinIO's root credentials; they stay in
	// this process. The worker and server get users limited to Bucket.
	AccessKey, SecretKey, Bucket string
	// ExpiryDays is the expiry rule of the bucket's job objects.
	ExpiryDays int
	// Listen is the server's address, for the dashboard's openness (an
	// open dashboard on loopback only).
	Listen string
	// EgressConfig, WebhookConfig and AuthConfig are the worker's and the
	// server's settings files. Each left empty gets a dev one in Dir: jobs
	// on the default queue may reach the package registries, webhooks are
	// signed and may go to private addresses, and one tenant "dev" may do
	// everything with one token.
	EgressConfig, WebhookConfig, AuthConfig string
	// WorkerStopTimeout is how long the worker gets to stop after SIGTERM:
	// its shutdown grace and the time to hand jobs back. Default
	// devstack.StopTimeout.
	WorkerStopTimeout time.Duration
	Logger            *slog.Logger
}

// Dev is a running dev stack.
type Dev struct {
	*devstack.Stack
	// Dir holds everything; Access the bucket's users (secrets in
	// Stack.AccessFile).
	Dir    string
	Access *devstack.BucketAccess
	// WorkerPID and WorkerLog are the worker's (the server logs there too).
	WorkerPID int
	WorkerLog string
	// EgressConfig, WebhookConfig and AuthConfig are the settings files in
	// use; Written* tell which were written here.
	EgressConfig, WebhookConfig, AuthConfig          string
	WroteEgress, WroteWebhookConfig, WroteAuthConfig bool
	// WebhookSecrets are the written webhook config's signing secrets, the
	// queues' and tenant dev's, comma-separated (as
	// examples/webhook_receiver takes them).
	WebhookSecrets string
	// Token is the written auth config's token for tenant dev, kept in
	// TokenFile.
	Token, TokenFile string
	// OpenDashboard: the dashboard opens without a token to this host's
	// own clients (the server is on loopback).
	OpenDashboard bool
}

// DefaultDir is $XDG_DATA_HOME/sandq/dev, or ~/.local/share/sandq/dev.
func DefaultDir() string {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(base, "sandq", "dev")
}

// Start starts the services, prepares the bucket and its users, writes the
// missing settings files and starts the worker, then the server. On error,
// nothing it started is left running.
func Start(ctx context.Context, o Options) (_ *Dev, err error) {
	if o.Dir == "" {
		o.Dir = DefaultDir()
	}
	var undo cleanup.Stack
	defer undo.ReleaseOnError(ctx, &err)
	stack, err := devstack.Start(ctx, devstack.Options{
		Dir: o.Dir, RedisPort: o.RedisPort, MinioPort: o.MinioPort, MinioConsolePort: o.MinioConsolePort,
		AccessKey: o.AccessKey, SecretKey: o.SecretKey, AppendOnly: true, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	undo.Add("dev stack", func(context.Context) error { return stack.Stop() })
	d := &Dev{Stack: stack, Dir: o.Dir, WorkerLog: filepath.Join(o.Dir, "logs", "worker.log"),
		EgressConfig: o.EgressConfig, WebhookConfig: o.WebhookConfig, AuthConfig: o.AuthConfig}
	// MinIO's root user stays in this process, for bootstrap: the bucket,
	// its expiry rule, and a user per role limited to the bucket. The
	// worker and the API server get those users.
	if d.Access, err = stack.ProvisionBucket(ctx, o.Bucket, devstack.ProvisionOptions{ExpiryDays: o.ExpiryDays}); err != nil {
		return nil, err
	}
	if err := d.writeSettings(o.Listen); err != nil {
		return nil, err
	}
	// The server (API, asynqmon, metrics), on loopback; it logs with the
	// worker. It starts first so that it stops last, after the worker has
	// finished its jobs; only the worker's exit ends `sandq dev`.
	server := devstack.Program{Name: "server", Log: "worker.log", Path: o.Sandq, Args: []string{"serve"}, Unwatched: true,
		Env: append(append([]string{}, o.Env...),
			"SANDQ_S3_ACCESS_KEY="+d.Access.Producer.AccessKey, "SANDQ_S3_SECRET_KEY="+d.Access.Producer.SecretKey)}
	if d.WroteAuthConfig {
		server.Env = append(server.Env, "SANDQ_AUTH_CONFIG="+d.AuthConfig)
	}
	if d.OpenDashboard {
		server.Env = append(server.Env, "SANDQ_OPEN_DASHBOARD=true")
	}
	if _, err := stack.Run(server); err != nil {
		return nil, err
	}
	worker := devstack.Program{Name: "worker", Path: o.Sandq, Args: []string{"worker"}, StopTimeout: o.WorkerStopTimeout,
		Env: append(append([]string{}, o.Env...),
			"SANDQ_S3_ACCESS_KEY="+d.Access.Worker.AccessKey, "SANDQ_S3_SECRET_KEY="+d.Access.Worker.SecretKey)}
	if d.WroteEgress {
		worker.Env = append(worker.Env, "SANDQ_EGRESS_CONFIG="+d.EgressConfig)
	}
	if d.WroteWebhookConfig {
		worker.Env = append(worker.Env, "SANDQ_WEBHOOK_CONFIG="+d.WebhookConfig)
	}
	worker.Env = append(worker.Env, o.WorkerEnv...)
	if d.WorkerPID, err = stack.Run(worker); err != nil {
		return nil, err
	}
	return d, nil
}

// writeSettings writes the settings files not given, and tells whether the
// dashboard may open without a token.
func (d *Dev) writeSettings(listen string) (err error) {
	if d.EgressConfig == "" {
		d.EgressConfig, d.WroteEgress = filepath.Join(d.Dir, "egress.json"), true
		if err := os.WriteFile(d.EgressConfig, []byte(EgressPolicy), 0o644); err != nil {
			return err
		}
	}
	if d.WebhookConfig == "" {
		d.WebhookConfig, d.WroteWebhookConfig = filepath.Join(d.Dir, "webhook.json"), true
		if d.WebhookSecrets, err = WriteWebhookConfig(d.WebhookConfig); err != nil {
			return err
		}
	}
	if d.AuthConfig == "" {
		d.AuthConfig, d.WroteAuthConfig = filepath.Join(d.Dir, "auth.json"), true
		d.TokenFile = filepath.Join(d.Dir, "dev-token")
		if d.Token, err = WriteAuthConfig(d.AuthConfig, d.TokenFile); err != nil {
			return err
		}
	}
	d.OpenDashboard = Loopback(listen)
	return nil
}

// Loopback reports whether an address is on loopback only: a loopback IP
// or localhost.
func Loopback(listen string) bool {
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
