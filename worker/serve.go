package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/cleanup"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// ServeOptions are how `sandq worker` runs a worker beside its config.
type ServeOptions struct {
	Logger *slog.Logger
	// Networked: jobs may have a network (an egress policy is configured),
	// so the runner makes job networks.
	Networked bool
	// MetricsAddr, when set, serves the worker's Prometheus metrics at
	// /metrics there.
	MetricsAddr string
}

// Serve runs a worker on the runsc runner until ctx ends, then stops it
// (running jobs get the grace period) and tears down what it made, last
// made first. It refuses to start with an image it cannot run or a bucket
// it cannot use.
func Serve(ctx context.Context, cfg jobs.Config, store *storage.Store, o ServeOptions) error {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// Before the runner starts (and sweeps): every image it may run.
	if err := cfg.CheckImages(logger); err != nil {
		return err
	}
	if err := store.EnsureBucket(ctx); err != nil {
		if errors.Is(err, storage.ErrAccessDenied) {
			err = fmt.Errorf("%w (make the bucket with `sandq s3 setup` and the store's admin credentials)", err)
		}
		return fmt.Errorf("object store at %s: %w", cfg.Storage.Endpoint, err)
	}
	rc, err := cfg.RunscConfig(logger, o.Networked)
	if err != nil {
		return err
	}
	var made cleanup.Stack
	defer func() {
		if rerr := made.Release(context.Background()); rerr != nil {
			logger.Error("tearing down the worker", "err", rerr)
		}
	}()
	runner, err := executor.NewRunscRunner(ctx, rc)
	if err != nil {
		return err
	}
	made.Add("runner", runner.Close)
	w, err := New(cfg, runner, store, logger)
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			w.Shutdown()
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", w.Metrics().Handler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		made.Add("metrics server", func(context.Context) error { return srv.Close() })
		logger.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	// The metrics stay up while running jobs finish.
	made.Add("worker", func(context.Context) error {
		logger.Info("stopping: running jobs get the grace period", "grace", cfg.Worker.ShutdownGrace)
		w.Shutdown()
		return nil
	})
	<-ctx.Done()
	return nil
}
