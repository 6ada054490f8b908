package mcp

import (
	"context"
	"errors"
	"fmt"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

// backend submits and follows the jobs of one caller: a direct producer
// (stdio) or a tenant (HTTP).
type backend interface {
	Enqueue(context.Context, jobs.Submission) (*jobs.Enqueued, error)
	Status(context.Context, string) (*jobs.JobStatus, error)
	Wait(context.Context, string, func(*jobs.JobStatus)) (*jobs.JobStatus, error)
	Cancel(context.Context, string) (jobs.CancelOutcome, error)
}

// principalKey is where a verified request's api.Principal is kept in
// its token info.
const principalKey = "sandq.principal"

// backendOf is the backend of a call: its tenant's, when the request came
// over HTTP with a token; the direct producer over stdio. A call over HTTP
// without a verified token never gets the direct producer.
func (s *Server) backendOf(_ context.Context, req *sdk.CallToolRequest) (backend, error) {
	var extra *sdk.RequestExtra
	if req != nil {
		extra = req.Extra
	}
	if extra == nil || extra.TokenInfo == nil {
		if s.http {
			return nil, errors.New("unauthenticated: the request carries no verified token")
		}
		return s.cfg.Client, nil
	}
	p, ok := extra.TokenInfo.Extra[principalKey].(api.Principal)
	if !ok {
		return nil, errors.New("unauthenticated: the request carries no verified token")
	}
	return tenantBackend{c: s.cfg.Client, p: p, view: s.cfg.Client.Tenant(p.Tenant())}, nil
}

// tenantBackend is a tenant's jobs, as the API has them: submitted as the
// tenant's (its queues, its cap of unfinished jobs), read and cancelled
// only through the tenant's view, where another owner's job is not found.
type tenantBackend struct {
	c    *jobs.Client
	p    api.Principal
	view jobs.TenantJobs
}

// tenantOf is the tenant a backend submits as; empty for the direct
// producer, which has none.
func tenantOf(b backend) string {
	if t, ok := b.(tenantBackend); ok {
		return t.p.Tenant()
	}
	return ""
}

func (t tenantBackend) Enqueue(ctx context.Context, sub jobs.Submission) (*jobs.Enqueued, error) {
	if !t.p.MayUse(sub.Queue) {
		return nil, &jobs.FieldError{Field: "queue", Msg: fmt.Sprintf("tenant %s may not use queue %q", t.p.Tenant(), sub.Queue)}
	}
	sub.Tenant, sub.MaxOpen = t.p.Tenant(), t.p.MaxOpen()
	return t.c.Enqueue(ctx, sub)
}

func (t tenantBackend) Status(ctx context.Context, id string) (*jobs.JobStatus, error) {
	return t.view.Status(ctx, id)
}

// Wait checks the job is the tenant's before following it.
func (t tenantBackend) Wait(ctx context.Context, id string, onState func(*jobs.JobStatus)) (*jobs.JobStatus, error) {
	if _, err := t.view.Status(ctx, id); err != nil {
		return nil, err
	}
	return t.c.Wait(ctx, id, onState)
}

func (t tenantBackend) Cancel(ctx context.Context, id string) (jobs.CancelOutcome, error) {
	return t.view.Cancel(ctx, id)
}
