package jobs

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrRedisEviction marks a Redis that may evict keys: under memory pressure
// it would drop queued tasks and results without a trace.
var ErrRedisEviction = errors.New("redis may evict sandq's keys")

// CheckRedisEviction refuses a Redis whose maxmemory-policy is not
// noeviction. It asks CONFIG GET, and where CONFIG is disabled or renamed
// (as managed services do) INFO memory; if neither answers it refuses too,
// since it cannot tell. In a Redis Cluster it checks every primary; with
// Sentinel, the client talks to the primary.
func CheckRedisEviction(ctx context.Context, rdb redis.UniversalClient) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			if err := checkEviction(ctx, node); err != nil {
				return fmt.Errorf("cluster node %s: %w", node.Options().Addr, err)
			}
			return nil
		})
	}
	return checkEviction(ctx, rdb)
}

// checkEviction is CheckRedisEviction for one server.
func checkEviction(ctx context.Context, rdb redis.Cmdable) error {
	const fix = "set `maxmemory-policy noeviction` in redis.conf (or CONFIG SET maxmemory-policy noeviction, or the managed service's parameter)"
	policy, cfgErr := "", error(nil)
	if m, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result(); err != nil {
		cfgErr = err
	} else if p, ok := m["maxmemory-policy"]; ok {
		policy = p
	} else {
		cfgErr = errors.New("no maxmemory-policy in the answer")
	}
	if policy == "" {
		info, err := rdb.Info(ctx, "memory").Result()
		if err == nil {
			policy = infoField(info, "maxmemory_policy")
			if policy == "" {
				err = errors.New("no maxmemory_policy in the answer")
			}
		}
		if err != nil {
			return fmt.Errorf("%w: cannot read Redis's maxmemory-policy (CONFIG GET: %w; INFO memory: %w); sandq needs noeviction, and the worker does not start without knowing: allow this user CONFIG GET or INFO, or %s",
				ErrRedisEviction, cfgErr, err, fix)
		}
	}
	if policy != "noeviction" {
		return fmt.Errorf("%w: Redis's maxmemory-policy is %s; sandq needs noeviction, or Redis could evict queued tasks and results when it is full: %s",
			ErrRedisEviction, policy, fix)
	}
	return nil
}

// infoField is a field of an INFO answer ("name:value" lines).
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
