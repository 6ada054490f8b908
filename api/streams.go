package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/keys"
)

// A tenant's open event streams are counted in Redis, so that every API
// server of a deployment shares the cap: sandq:streams:<tenant> is a
// sorted set of stream IDs scored by when their lease ends (Redis's clock,
// ms). A stream renews its lease while it lasts and removes itself when it
// ends; the lease of a server that died ends by itself.
const (
	// The lease outlasts a renewal delayed by a stream write that blocks
	// up to its deadline (MaxStreamWriteTimeout), so an open stream never
	// drops out of the count.
	streamLease      = 2 * time.Minute
	streamRenewEvery = 10 * time.Second
	streamRetryAfter = 5 * time.Second
)

// streamLeaseScript takes (ARGV[3] "new") or renews ("renew") a stream's
// lease. KEYS[1] is the tenant's set; ARGV[1] the cap (negative: none),
// ARGV[2] the lease in ms, ARGV[4] the stream's ID. It returns 1, or 0
// when a new stream would pass the cap. Expired leases go first.
var streamLeaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max = tonumber(ARGV[1])
if ARGV[3] == 'new' and max >= 0 and redis.call('ZCARD', KEYS[1]) >= max then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
`)

// streamSlot is one open event stream's place in its tenant's count.
type streamSlot struct {
	rdb     redis.UniversalClient
	key, id string
	max     int
	renewed time.Time
}

// openStream takes a place for a new event stream of the tenant, or
// refuses it (429) when the tenant has as many as it may.
func (s *Server) openStream(ctx context.Context, p *principal) (*streamSlot, *Error) {
	b := make([]byte, 12)
	rand.Read(b)
	sl := &streamSlot{rdb: s.rdb, key: keys.Streams(p.tenant), id: hex.EncodeToString(b), max: p.t.MaxStreams}
	if sl.max < 0 {
		return sl, nil
	}
	ok, err := streamLeaseScript.Run(ctx, s.rdb, []string{sl.key}, sl.max, streamLease.Milliseconds(), "new", sl.id).Int()
	if err != nil {
		return nil, classify(fmt.Errorf("count the event streams of tenant %s: %w", p.tenant, err))
	}
	if ok == 0 {
		e := apiError(http.StatusTooManyRequests, "too_many_streams", "",
			fmt.Sprintf("tenant %s has %d event streams open, the most it may have; close one, or poll GET /v1/jobs/{id} instead", p.tenant, sl.max))
		e.retryAfter = streamRetryAfter
		return nil, e
	}
	sl.renewed = time.Now()
	return sl, nil
}

// renew extends the stream's lease when it is due.
func (sl *streamSlot) renew(ctx context.Context) {
	if sl.max < 0 || time.Since(sl.renewed) < streamRenewEvery {
		return
	}
	// A failed renewal is tried again at the next tick; the lease lasts
	// many renewal periods.
	if streamLeaseScript.Run(ctx, sl.rdb, []string{sl.key}, sl.max, streamLease.Milliseconds(), "renew", sl.id).Err() == nil {
		sl.renewed = time.Now()
	}
}

// release gives the stream's place back.
func (sl *streamSlot) release(ctx context.Context) {
	if sl.max < 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	sl.rdb.ZRem(ctx, sl.key, sl.id)
}
