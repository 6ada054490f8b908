package worker

import (
	"context"
	"fmt"
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

// snapshotPreload are the modules the snapshot templates of the images
// sandq ships preload: images do not declare a preload list yet, so a
// worker with --snapshots makes templates for these names only.
var snapshotPreload = map[string][]string{
	"analysis": {"numpy", "pandas", "matplotlib", "matplotlib.pyplot", "openpyxl", "scipy"},
	"default":  {"numpy", "matplotlib", "matplotlib.pyplot"},
}

// newSnapshotRunner wraps the handler's runner with snapshot templates, one
// for each of the worker's images that has a preload list, made for the
// jobs most jobs are: python, the default limits and no network. An image
// whose template cannot be made is logged and its jobs start cold.
func (h *Handler) newSnapshotRunner(ctx context.Context) (*executor.SnapshotRunner, error) {
	p, err := executor.NewSnapshotRunner(h.runner, nil)
	if err != nil {
		return nil, fmt.Errorf("--snapshots: %w", err)
	}
	for _, name := range h.cfg.AllowedImages() {
		preload, ok := snapshotPreload[name]
		if !ok {
			h.logger.Info("no snapshot template: the image has no preload list", "image", name)
			continue
		}
		img, err := image.Lookup(h.cfg.Worker.ImageDir, name)
		if err != nil {
			return nil, fmt.Errorf("--snapshots: image %q: %w", name, err)
		}
		t, err := p.Build(ctx, executor.TemplateSpec{
			Image: img.Rootfs, ImageDigest: img.Digest, Preload: preload, Env: sandboxEnv(nil),
			UID: h.cfg.Worker.UID, GID: h.cfg.Worker.GID, Limits: h.sandboxLimits(h.cfg.DefaultLimits),
		})
		if err != nil {
			h.logger.Error("no snapshot template; the image's jobs start cold", "image", name, "err", err)
			continue
		}
		h.logger.Info("snapshot template ready", "image", name, "template", t.Dir, "preload", strings.Join(t.Info.Preload, ","))
	}
	return p, nil
}
