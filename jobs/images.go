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
	"github.com/sandq/sandq/internal/keys"
)

// publishedImages is one queue's entry in keys.Images: the images its
// workers run jobs on. Producers check a job's image against it.
type publishedImages struct {
	// Default is the image of jobs that name none.
	Default string `json:"default"`
	// Allowed are the images jobs may name, the default among them.
	Allowed []string `json:"allowed"`
}

// AllowedImages are the images this worker runs: its default first.
func (c Config) AllowedImages() []string {
	out := []string{c.Worker.Image}
	for _, name := range c.Worker.Images {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// PublishImages records, for each queue the worker serves, the images its
// jobs may name.
func (c Config) PublishImages(ctx context.Context, rdb redis.UniversalClient) error {
	b, err := json.Marshal(publishedImages{Default: c.Worker.Image, Allowed: c.AllowedImages()})
	if err != nil {
		return err
	}
	for q := range c.Worker.Queues {
		if err := rdb.HSet(ctx, keys.Images, q, b).Err(); err != nil {
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
	for _, name := range c.AllowedImages() {
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
	b, err := c.rdb.HGet(ctx, keys.Images, queue).Bytes()
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
