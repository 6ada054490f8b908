package api

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Principal is who a bearer token acts for: its tenant and the tenant's
// limits. Servers other than this one that take the API's tokens (sandq
// mcp --listen) authenticate with it, so that one auth config serves both.
type Principal struct{ p *principal }

// LookupToken finds the principal of a bearer token; ok is false for a
// token the configuration does not hold (and for any token without one).
func (c *AuthConfig) LookupToken(token string) (Principal, bool) {
	if c == nil || token == "" {
		return Principal{}, false
	}
	p, ok := c.byHash[HashToken(token)]
	return Principal{p}, ok
}

// Tenant is the tenant the token acts for.
func (p Principal) Tenant() string { return p.p.tenant }

// TokenName is the token's label in the configuration.
func (p Principal) TokenName() string { return p.p.token }

// MayUse reports whether the tenant may submit to queue.
func (p Principal) MayUse(queue string) bool { return p.p.mayUse(queue) }

// MaxOpen is the cap of the tenant's unfinished jobs (0: none), as
// jobs.Submission.MaxOpen takes it.
func (p Principal) MaxOpen() int { return p.p.maxOpen() }

// Allow takes one request from the tenant's rate budget, shared with the
// API in Redis; when none is left it returns how long until there is.
func (p Principal) Allow(ctx context.Context, rdb redis.Scripter) (time.Duration, error) {
	return allow(ctx, rdb, p.p.tenant, p.p.t)
}
