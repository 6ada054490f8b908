package api

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/keys"
)

// gcra is a generic cell rate limiter kept in Redis, so that every API
// server of a deployment shares one budget per tenant. It uses Redis's
// clock. KEYS[1] holds the theoretical arrival time in microseconds;
// ARGV[1] is the interval between requests (µs), ARGV[2] the burst.
// It returns 0 when allowed, else the microseconds to wait.
var gcra = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
`)

// allow takes one request from a tenant's budget; when there is none left
// it returns how long until there is.
func allow(ctx context.Context, rdb redis.Scripter, tenant string, t Tenant) (time.Duration, error) {
	if t.RatePerSecond < 0 {
		return 0, nil
	}
	interval := int64(math.Ceil(1e6 / t.RatePerSecond))
	wait, err := gcra.Run(ctx, rdb, []string{keys.RateLimit(tenant)}, interval, max(t.Burst, 1)).Int64()
	if err != nil {
		return 0, fmt.Errorf("rate limit: %w", err)
	}
	return time.Duration(wait) * time.Microsecond, nil
}
