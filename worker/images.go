package worker

import (
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
