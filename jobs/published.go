package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/storage"
)

// QueueImages are the images a queue's workers run, as they publish them
// (keys.Images): Default for jobs that name none, Allowed those jobs may
// name.
type QueueImages struct {
	Default string   `json:"default"`
	Allowed []string `json:"allowed"`
}

// QueueNetwork is the network policy a queue's workers enforce, as they
// publish it (keys.Egress): the groups of host patterns, what the queue's
// jobs may ask for at most and get by default, and the ports.
type QueueNetwork struct {
	Groups map[string][]string `json:"groups"`
	Max    []string            `json:"max"`
	// Default is what a job asking for "default" gets.
	Default []string `json:"default,omitempty"`
	Ports   []int    `json:"ports"`
}

// Config is the client's configuration, its defaults applied.
func (c *Client) Config() Config { return c.cfg }

// PublishedImages reads what the workers of queue published of their
// images; nil when none has (no worker serving it has started).
func (c *Client) PublishedImages(ctx context.Context, queue string) (*QueueImages, error) {
	var p publishedImages
	ok, err := c.readPublished(ctx, keys.Images, "images", queue, &p)
	if err != nil || !ok {
		return nil, err
	}
	return &QueueImages{Default: p.Default, Allowed: p.Allowed}, nil
}

// PublishedNetwork reads the network policy the workers of queue
// published; nil when none has (the queue's jobs get no network).
func (c *Client) PublishedNetwork(ctx context.Context, queue string) (*QueueNetwork, error) {
	var p publishedEgress
	ok, err := c.readPublished(ctx, keys.Egress, "network policy", queue, &p)
	if err != nil || !ok {
		return nil, err
	}
	ports := p.Queue.Ports
	if len(ports) == 0 {
		ports = p.Ports
	}
	return &QueueNetwork{Groups: p.Groups, Max: p.Queue.Max, Default: p.Queue.Default, Ports: ports}, nil
}

func (c *Client) readPublished(ctx context.Context, hash, what, queue string, v any) (bool, error) {
	b, err := c.rdb.HGet(ctx, hash, queue).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the %s published for queue %s: %w", what, queue, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("the %s published for queue %s (%s): %w", what, queue, hash, err)
	}
	return true, nil
}

// Store is where the client keeps jobs' files.
func (c *Client) Store() *storage.Store { return c.store }

// Redis is the client's connection to Redis, for callers that share its
// budgets (an API rate limit) without a client of their own.
func (c *Client) Redis() redis.UniversalClient { return c.rdb }
