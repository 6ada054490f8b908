package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
)

// imagesKey is a Redis hash: per queue, the images its workers run jobs on
// (publishedImages as JSON). Producers check a job's image against it.
const imagesKey = "sandq:images"

type publishedImages struct {
	// Default is the image of jobs that name none.
	Default string `json:"default"`
	// Allowed are the images jobs may name, the default among them.
	Allowed []string `json:"allowed"`
}

// allowedImages are the images this worker runs: its default first.
func (c Config) allowedImages() []string {
	out := []string{c.Worker.Image}
	for _, name := range c.Worker.Images {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// publishImages records, for each queue the worker serves, the images its
// jobs may name.
func (c Config) publishImages(ctx context.Context, rdb redis.UniversalClient) error {
	b, err := json.Marshal(publishedImages{Default: c.Worker.Image, Allowed: c.allowedImages()})
	if err != nil {
		return err
	}
	for q := range c.Worker.Queues {
		if err := rdb.HSet(ctx, imagesKey, q, b).Err(); err != nil {
			return fmt.Errorf("publish the images of queue %s: %w", q, err)
		}
	}
	return nil
}

// CheckImages refuses to start a worker with an image it cannot run: its
// --image or one of its --images missing or unusable. An image made by an
// older sandq is first brought up to date in place (image.Harden: no
// setuid/setgid or world-writable files left on the host, its directories
// 0700), with a warning.
func (c Config) CheckImages(logger *slog.Logger) error {
	for _, name := range c.allowedImages() {
		img, err := image.Harden(c.Worker.ImageDir, name, logger)
		if err != nil {
			return fmt.Errorf("worker image %q: %w", name, err)
		}
		if err := executor.CheckImage(img.Rootfs); err != nil {
			return fmt.Errorf("worker image %q: %w; build it with `sandq image build %s --packages-file FILE`", name, err, name)
		}
	}
	return nil
}

// checkImage checks, at enqueue, that the job's queue lets it name image.
func (c *Client) checkImage(ctx context.Context, queue, name string) error {
	if name == "" {
		return nil
	}
	if err := CheckImageName(name); err != nil {
		return err
	}
	b, err := c.rdb.HGet(ctx, imagesKey, queue).Bytes()
	if errors.Is(err, redis.Nil) {
		return &FieldError{Field: "image", Msg: fmt.Sprintf("queue %q has no published images (no worker serving it has started); name no image to get the queue's default", queue)}
	}
	if err != nil {
		return fmt.Errorf("read the images of queue %s: %w", queue, err)
	}
	var p publishedImages
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("images of queue %s: %w", queue, err)
	}
	if !slices.Contains(p.Allowed, name) {
		return &FieldError{Field: "image", Msg: fmt.Sprintf("image %q is not allowed on queue %q (allowed: %s)", name, queue, strings.Join(p.Allowed, ", "))}
	}
	return nil
}

// jobImage resolves the image a job runs on, on this worker.
func (h *Handler) jobImage(job *Job) (*image.Image, error) {
	name := job.Image
	if name == "" {
		name = h.cfg.Worker.Image
	}
	if !slices.Contains(h.cfg.allowedImages(), name) {
		return nil, fmt.Errorf("image %q is not one this worker runs (%s); the queue's workers disagree on their images", name, strings.Join(h.cfg.allowedImages(), ", "))
	}
	img, err := image.Lookup(h.cfg.Worker.ImageDir, name)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

// newWarmPool makes a pool of n warm sandboxes for the jobs most jobs are:
// the default image and limits, and no network.
func (h *Handler) newWarmPool(n int) (*executor.WarmPool, error) {
	rr, ok := h.runner.(*executor.RunscRunner)
	if !ok {
		return nil, errors.New("warm sandboxes need the runsc runner")
	}
	img, err := h.jobImage(&Job{})
	if err != nil {
		return nil, err
	}
	w, d := h.cfg.Worker, h.cfg.DefaultLimits
	pool, err := rr.NewWarmPool(executor.Spec{
		Image: img.Rootfs, Env: sandboxEnv(nil), UID: w.UID, GID: w.GID,
		Limits: executor.Limits{
			Timeout: d.Timeout, Memory: d.Memory, Disk: d.Disk, OutputBytes: d.OutputBytes, OutputFiles: d.OutputFiles,
			Pids: w.Pids, LogBytes: w.LogBytes, LogTail: w.LogTail,
		},
	}, n)
	if err != nil {
		return nil, fmt.Errorf("--warm-sandboxes: %w", err)
	}
	return pool, nil
}
