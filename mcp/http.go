package mcp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// Handler serves the streamable HTTP transport. Every request takes a
// bearer token of the auth config (the API's tokens): without one, or
// with one it does not hold, it is 401; over the tenant's request rate
// (shared with the API), 429. The transport is stateless: no session
// lives in this server, so any replica answers any request, and each
// request's token picks the tenant its jobs belong to.
func (s *Server) Handler() http.Handler {
	s.http = true
	srv := s.mcpServer()
	h := sdk.NewStreamableHTTPHandler(func(*http.Request) *sdk.Server { return srv }, &sdk.StreamableHTTPOptions{
		Stateless: true, JSONResponse: true, Logger: s.logger,
		// The SDK's guard against DNS rebinding refuses a request that
		// reaches a loopback address under another name, which is what a
		// reverse proxy on this host forwarding the public name sends.
		// It is not needed: every request takes a bearer token, which a
		// browser never adds by itself, so a page that rebinds a name to
		// this server gets 401.
		DisableLocalhostProtection: true,
	})
	verify := auth.RequireBearerToken(s.verifyToken, &auth.RequireBearerTokenOptions{AllowMissingExpiration: true})
	return s.authenticate(verify(h))
}

// authenticate refuses a request without a valid token (401) or over its
// tenant's rate (429) with the API's error document, before the MCP
// handler reads it.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := ""
		if scheme, rest, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimSpace(rest)
		}
		if tok == "" {
			unauthorized(w, "no token: send Authorization: Bearer <token> (an API token: sandq token create)")
			return
		}
		p, ok := s.cfg.Auth.LookupToken(tok)
		if !ok {
			unauthorized(w, "the token is not valid")
			return
		}
		wait, err := p.Allow(r.Context(), s.cfg.Client.Redis())
		if err != nil {
			s.logger.Error("rate limit", "tenant", p.Tenant(), "err", err)
			writeError(w, http.StatusServiceUnavailable, "unavailable", "the rate limit could not be read: "+err.Error())
			return
		}
		if wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Round(time.Second)/time.Second)+1))
			writeError(w, http.StatusTooManyRequests, "rate_limited", "tenant "+p.Tenant()+" is over its request rate; retry after "+wait.Round(time.Millisecond).String())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// verifyToken gives the SDK the request's principal: its tenant is the
// user the SDK ties sessions to, and the tools read the principal back.
func (s *Server) verifyToken(_ context.Context, tok string, _ *http.Request) (*auth.TokenInfo, error) {
	p, ok := s.cfg.Auth.LookupToken(tok)
	if !ok {
		return nil, fmt.Errorf("the token is not valid: %w", auth.ErrInvalidToken)
	}
	return &auth.TokenInfo{UserID: p.Tenant(), Extra: map[string]any{principalKey: p}}, nil
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="sandq"`)
	writeError(w, http.StatusUnauthorized, "unauthenticated", msg)
}

// writeError answers with the API's error document.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}
