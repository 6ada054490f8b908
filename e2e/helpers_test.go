package e2e

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	t.Cleanup(func() { c.Close() })
	return c
}
