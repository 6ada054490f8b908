package api

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/sandq/sandq/jobs"
)

// AuthConfig is who may use the API: tenants and their tokens. Tokens are
// stored only as their SHA-256: they are 256-bit random strings, so a hash
// is enough to make a leaked configuration useless to an attacker (a slow
// password hash adds nothing for secrets that cannot be guessed).
type AuthConfig struct {
	Tenants map[string]Tenant `json:"tenants"`
	Tokens  []TokenEntry      `json:"tokens"`

	byHash map[string]*principal
}

// Tenant is a producer organisation: its jobs are visible only to it.
type Tenant struct {
	// Queues the tenant may submit to; "*" is any queue.
	Queues []string `json:"queues"`
	// RatePerSecond and Burst bound the tenant's API requests (all of its
	// tokens together). Defaults 20 and 40; a negative rate is no limit.
	RatePerSecond float64 `json:"rate_per_second,omitempty"`
	Burst         int     `json:"burst,omitempty"`
	// MaxPending caps the tenant's unfinished (queued or running) jobs.
	// Default 1000; negative is no cap.
	MaxPending int `json:"max_pending,omitempty"`
	// MaxStreams caps the tenant's open event streams (GET
	// /v1/jobs/{id}/events), counted in Redis across every API server.
	// Default 20; negative is no cap.
	MaxStreams int `json:"max_streams,omitempty"`
	// Operator tokens may also open the dashboard at /monitoring.
	Operator bool `json:"operator,omitempty"`
}

// TokenEntry is one token: its hash and the tenant it acts for.
type TokenEntry struct {
	Name   string `json:"name,omitempty"`
	Tenant string `json:"tenant"`
	SHA256 string `json:"sha256"`
}

// Defaults of a tenant's limits.
const (
	DefaultRatePerSecond = 20
	DefaultBurst         = 40
	DefaultMaxPending    = 1000
	DefaultMaxStreams    = 20
)

type principal struct {
	tenant string
	token  string
	t      Tenant
}

var (
	tenantPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	hashPattern   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// LoadAuthConfig reads and validates an auth configuration file.
func LoadAuthConfig(path string) (*AuthConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth config: %w", err)
	}
	var c AuthConfig
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("auth config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("auth config %s: %w", path, err)
	}
	return &c, nil
}

// Validate checks the configuration, applies defaults and indexes tokens.
func (c *AuthConfig) Validate() error {
	for name, t := range c.Tenants {
		if !tenantPattern.MatchString(name) {
			return fmt.Errorf("tenant %q: not a valid name (letters, digits, _ . -, at most 64)", name)
		}
		if len(t.Queues) == 0 {
			return fmt.Errorf("tenant %s: no queues", name)
		}
		for _, q := range t.Queues {
			if q == "*" {
				continue
			}
			if err := jobs.CheckQueue(q); err != nil {
				return fmt.Errorf("tenant %s: %w", name, err)
			}
		}
		if t.RatePerSecond == 0 {
			t.RatePerSecond = DefaultRatePerSecond
		}
		if t.Burst == 0 {
			t.Burst = DefaultBurst
		}
		if t.Burst < 0 {
			return fmt.Errorf("tenant %s: burst must not be negative", name)
		}
		if t.MaxPending == 0 {
			t.MaxPending = DefaultMaxPending
		}
		if t.MaxStreams == 0 {
			t.MaxStreams = DefaultMaxStreams
		}
		c.Tenants[name] = t
	}
	c.byHash = map[string]*principal{}
	for i, tok := range c.Tokens {
		t, ok := c.Tenants[tok.Tenant]
		if !ok {
			return fmt.Errorf("tokens[%d] (%s): tenant %q is not configured", i, tok.Name, tok.Tenant)
		}
		if !hashPattern.MatchString(tok.SHA256) {
			return fmt.Errorf("tokens[%d] (%s): sha256 must be 64 lower-case hex digits (sandq token create prints it)", i, tok.Name)
		}
		if _, dup := c.byHash[tok.SHA256]; dup {
			return fmt.Errorf("tokens[%d] (%s): the same token is configured twice", i, tok.Name)
		}
		c.byHash[tok.SHA256] = &principal{tenant: tok.Tenant, token: tok.Name, t: t}
	}
	return nil
}

// TokenPrefix starts every token, so they are easy to find in leaks.
const TokenPrefix = "sandq_"

// NewToken returns a new random token and its configuration entry.
func NewToken(tenant, name string) (string, TokenEntry, error) {
	if !tenantPattern.MatchString(tenant) {
		return "", TokenEntry{}, fmt.Errorf("tenant %q: not a valid name (letters, digits, _ . -, at most 64)", tenant)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", TokenEntry{}, err
	}
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return tok, TokenEntry{Name: name, Tenant: tenant, SHA256: HashToken(tok)}, nil
}

// HashToken is what the configuration stores of a token.
func HashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

var errNoToken = errors.New("no token: send Authorization: Bearer <token>")
var errBadToken = errors.New("the token is not valid")

// authenticate finds the principal of a request's bearer token or, when
// basic is set, of a basic-auth password (browsers opening the dashboard).
func (c *AuthConfig) authenticate(r *http.Request, basic bool) (*principal, error) {
	tok := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimSpace(rest)
		}
	}
	if tok == "" && basic {
		_, tok, _ = r.BasicAuth()
	}
	if tok == "" {
		return nil, errNoToken
	}
	if c == nil {
		return nil, errBadToken
	}
	p, ok := c.byHash[HashToken(tok)]
	if !ok {
		return nil, errBadToken
	}
	return p, nil
}

// mayUse reports whether the tenant may submit to queue.
// maxOpen is the cap of the tenant's unfinished jobs (0: none), as
// jobs.Submission.MaxOpen takes it.
func (p *principal) maxOpen() int { return max(p.t.MaxPending, 0) }

func (p *principal) mayUse(queue string) bool {
	return slices.Contains(p.t.Queues, "*") || slices.Contains(p.t.Queues, queue)
}
