package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// jobImage resolves the image a job runs on, on this worker.
func (h *Handler) jobImage(job *jobs.Job) (*image.Image, error) {
	name := job.Image
	if name == "" {
		name = h.cfg.Worker.Image
	}
	if !slices.Contains(h.cfg.AllowedImages(), name) {
		return nil, fmt.Errorf("image %q is not one this worker runs (%s); the queue's workers disagree on their images", name, strings.Join(h.cfg.AllowedImages(), ", "))
	}
	img, err := image.Lookup(h.cfg.Worker.ImageDir, name)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

// newWarmRunner wraps the handler's runner with a pool of n warm sandboxes
// for the jobs most jobs are: the default image and limits, and no network.
func (h *Handler) newWarmRunner(n int) (*executor.WarmRunner, error) {
	img, err := h.jobImage(&jobs.Job{})
	if err != nil {
		return nil, err
	}
	pool, err := executor.NewWarmRunner(h.runner, executor.Spec{
		Image: img.Rootfs, Env: sandboxEnv(nil), UID: h.cfg.Worker.UID, GID: h.cfg.Worker.GID,
		Limits: h.sandboxLimits(h.cfg.DefaultLimits),
	}, n)
	if err != nil {
		return nil, fmt.Errorf("--warm-sandboxes: %w", err)
	}
	return pool, nil
}

// templateSpec is the snapshot template a worker of cfg makes for img, for
// the jobs most jobs are: python with the default limits (networked or not:
// a networked job is restored into its own namespace). It imports the
// image's preload list.
func templateSpec(cfg jobs.Config, img *image.Image) executor.TemplateSpec {
	return executor.TemplateSpec{
		Image: img.Rootfs, ImageDigest: img.Digest, Preload: img.Preload, Env: sandboxEnv(nil),
		UID: cfg.Worker.UID, GID: cfg.Worker.GID, Limits: sandboxLimits(cfg.Worker, cfg.DefaultLimits),
	}
}

// newSnapshotRunner wraps the handler's runner with snapshot templates, one
// for each of the worker's images that declares a preload list. An image
// whose template cannot be made is logged and its jobs start cold.
func (h *Handler) newSnapshotRunner(ctx context.Context) (*executor.SnapshotRunner, error) {
	p, err := executor.NewSnapshotRunner(h.runner, nil)
	if err != nil {
		return nil, fmt.Errorf("--snapshots: %w", err)
	}
	for _, name := range h.cfg.AllowedImages() {
		img, err := image.Lookup(h.cfg.Worker.ImageDir, name)
		if err != nil {
			return nil, fmt.Errorf("--snapshots: image %q: %w", name, err)
		}
		if len(img.Preload) == 0 {
			h.logger.Info("no snapshot template: the image declares no preload list (sandq image preload)", "image", name)
			continue
		}
		t, err := p.Build(ctx, templateSpec(h.cfg, img))
		if err != nil {
			h.logger.Error("no snapshot template; the image's jobs start cold", "image", name, "err", err)
			continue
		}
		h.logger.Info("snapshot template ready", "image", name, "template", t.Dir, "preload", strings.Join(t.Info.Preload, ","))
	}
	return p, nil
}

// MakeTemplates makes (or finds, when one is stored already) the snapshot
// template of each named image, or of every image a worker of cfg runs when
// none is named, exactly as such a worker with --snapshots would when it
// starts: `sandq image snapshot` runs it ahead of the workers. A named image
// that declares no preload list is an error; so is a template that cannot
// be made.
func MakeTemplates(ctx context.Context, cfg jobs.Config, names []string, logger *slog.Logger) (_ []*executor.Template, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	all := len(names) == 0
	if all {
		names = cfg.AllowedImages()
	}
	var imgs []*image.Image
	for _, name := range names {
		img, err := image.Lookup(cfg.Worker.ImageDir, name)
		if err != nil {
			return nil, fmt.Errorf("image %q: %w", name, err)
		}
		if len(img.Preload) == 0 {
			if all {
				logger.Info("no snapshot template: the image declares no preload list", "image", name)
				continue
			}
			return nil, fmt.Errorf("image %q declares no preload list: set one with `sandq image preload %s MODULE...`", name, name)
		}
		imgs = append(imgs, img)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("none of the images %s declares a preload list", strings.Join(names, ", "))
	}
	rc, err := cfg.RunscConfig(logger, false)
	if err != nil {
		return nil, err
	}
	runner, err := executor.NewRunscRunner(ctx, rc)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, runner.Close(context.WithoutCancel(ctx))) }()
	var made []*executor.Template
	for _, img := range imgs {
		t, err := runner.EnsureTemplate(ctx, templateSpec(cfg, img))
		if err != nil {
			return nil, fmt.Errorf("image %q: snapshot template: %w", img.Name, err)
		}
		made = append(made, t)
	}
	return made, nil
}
