// Package egress is the allowlisting HTTP proxy that is a sandboxed job's only
// way out of its network namespace.
//
// One Proxy serves a worker process. Each job that may use the network gets a
// Session: a listener on the host side of the job's veth pair (e.g.
// 10.200.0.1:3128) that accepts connections only from the job's address
// (e.g. 10.200.0.2). Requests — CONNECT tunnels and plain http:// requests —
// are decided by that job's own Policy: the host must be a name on the job's
// allowlist and the port one of its ports; IP literals are refused in every
// form; the name is resolved once and the checked address is dialled, and
// names that resolve to private, loopback, link-local, CGNAT, metadata or
// other special ranges are refused. Limits bound the job's connections,
// bytes and time, and every request is counted in the job's Audit.
//
// The proxy itself is Stripe's smokescreen (pkg/smokescreen), used as a
// library.
package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stripe/goproxy"
	"github.com/stripe/smokescreen/pkg/smokescreen"
	acl "github.com/stripe/smokescreen/pkg/smokescreen/acl/v1"
	"github.com/stripe/smokescreen/pkg/smokescreen/conntrack"
	"github.com/stripe/smokescreen/pkg/smokescreen/hostport"

	"github.com/sandq/sandq/internal/hostpattern"
	"github.com/stripe/smokescreen/pkg/smokescreen/metrics"
)

// Policy is what one job may reach.
type Policy struct {
	// Hosts are exact names ("example.org") or suffix globs
	// ("*.example.org", which does not match "example.org" itself);
	// case-insensitive, a trailing dot ignored. IP addresses are refused:
	// the proxy reaches names only.
	Hosts []string
	// Ports are the allowed destination ports; empty means 80 and 443.
	Ports []int
}

// Limits bound one job's traffic through the proxy. Zero fields take the
// defaults.
type Limits struct {
	// MaxConns caps the job's concurrent connections to the proxy; the
	// next one is closed at once. Default 32.
	MaxConns int
	// MaxBytes caps the bytes the job exchanges with the proxy, both
	// directions, over the session's life. Past it, the job's connections
	// are closed and new ones refused. Default 1 GiB.
	MaxBytes int64
	// IdleTimeout closes a connection with no bytes either way for this
	// long. Default 60s.
	IdleTimeout time.Duration
	// TotalTimeout closes a connection (and its tunnel) this long after it
	// was accepted. Default 10m.
	TotalTimeout time.Duration
	// ConnectTimeout bounds each upstream dial. Default 10s.
	ConnectTimeout time.Duration
}

// Limit defaults.
const (
	DefaultMaxConns       = 32
	DefaultMaxBytes       = 1 << 30
	DefaultIdleTimeout    = 60 * time.Second
	DefaultTotalTimeout   = 10 * time.Minute
	DefaultConnectTimeout = 10 * time.Second
)

// WithDefaults fills unset fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.TotalTimeout == 0 {
		l.TotalTimeout = DefaultTotalTimeout
	}
	if l.ConnectTimeout == 0 {
		l.ConnectTimeout = DefaultConnectTimeout
	}
	return l
}

func (l Limits) validate() error {
	switch {
	case l.MaxConns < 0:
		return fmt.Errorf("egress: Limits.MaxConns %d: must not be negative", l.MaxConns)
	case l.MaxBytes < 0:
		return fmt.Errorf("egress: Limits.MaxBytes %d: must not be negative", l.MaxBytes)
	case l.IdleTimeout < 0:
		return fmt.Errorf("egress: Limits.IdleTimeout %s: must not be negative", l.IdleTimeout)
	case l.TotalTimeout < 0:
		return fmt.Errorf("egress: Limits.TotalTimeout %s: must not be negative", l.TotalTimeout)
	case l.ConnectTimeout < 0:
		return fmt.Errorf("egress: Limits.ConnectTimeout %s: must not be negative", l.ConnectTimeout)
	}
	return nil
}

// Event.Decision values.
const (
	// DecisionAllowed: the request passed the policy and reached upstream.
	DecisionAllowed = "allowed"
	// DecisionRefused: the proxy refused the request (policy, address
	// range, limits).
	DecisionRefused = "refused"
	// DecisionFailed: the request passed the policy but upstream could not
	// be reached (resolution, dial or transfer error).
	DecisionFailed = "failed"
)

// Event is one request (or refused connection) in a job's audit.
type Event struct {
	Time     time.Time `json:"time"`
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	Method   string    `json:"method"`   // CONNECT or the HTTP method
	Decision string    `json:"decision"` // allowed, refused or failed
	Reason   string    `json:"reason"`
	// BytesOut and BytesIn are what went to and came from upstream: for a
	// CONNECT tunnel, exactly what went through it; for a plain HTTP
	// request, the request as sent upstream (request line, headers and
	// body) and the response as received (status line, headers and body,
	// as transferred: compressed if it was).
	BytesOut int64 `json:"bytes_out"`
	BytesIn  int64 `json:"bytes_in"`
}

// Resolver resolves names for the proxy. *net.Resolver implements it.
type Resolver interface {
	LookupIP(ctx context.Context, network, host string) ([]net.IP, error)
	LookupPort(ctx context.Context, network, service string) (int, error)
}

// Audit defaults.
const (
	// DefaultMaxEvents is how many events a session lists by default.
	DefaultMaxEvents = 1000
	// DefaultMaxDestinations is how many destinations (and how many
	// refused destinations) a session totals one by one by default.
	DefaultMaxDestinations = 256
)

// Config configures a Proxy.
type Config struct {
	Logger *slog.Logger
	// AllowRanges are CIDRs exempted from the refusal of private and
	// special ranges. Tests set 127.0.0.0/8 to reach loopback servers;
	// production never sets it.
	AllowRanges []string
	// DenyRanges are CIDRs refused in addition to the built-in ranges.
	DenyRanges []string
	// Resolver resolves the names jobs ask for. Default: the system's.
	Resolver Resolver
	// DNSTimeout bounds one resolution. Default 5s.
	DNSTimeout time.Duration
	// MaxEvents caps the events each session's audit lists one by one
	// (Audit.Events); the counts and totals of the audit cover every
	// request all the same. Default 1000.
	MaxEvents int
	// MaxDestinations caps the entries of each session's Audit.Destinations
	// and Audit.Refusals; requests to further destinations are added up in
	// Audit.OtherDestinations and Audit.OtherRefusals. Default 256.
	MaxDestinations int
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.DNSTimeout == 0 {
		c.DNSTimeout = smokescreen.DefaultDNSTimeout
	}
	if c.MaxEvents == 0 {
		c.MaxEvents = DefaultMaxEvents
	}
	if c.MaxDestinations == 0 {
		c.MaxDestinations = DefaultMaxDestinations
	}
	return c
}

func (c Config) validate() error {
	for i, r := range c.AllowRanges {
		if _, err := netip.ParsePrefix(r); err != nil {
			return fmt.Errorf("egress: Config.AllowRanges[%d] %q: %w", i, r, err)
		}
	}
	for i, r := range c.DenyRanges {
		if _, err := netip.ParsePrefix(r); err != nil {
			return fmt.Errorf("egress: Config.DenyRanges[%d] %q: %w", i, r, err)
		}
	}
	if c.DNSTimeout < 0 {
		return fmt.Errorf("egress: Config.DNSTimeout %s: must not be negative", c.DNSTimeout)
	}
	if c.MaxEvents < 0 {
		return fmt.Errorf("egress: Config.MaxEvents %d: must not be negative", c.MaxEvents)
	}
	if c.MaxDestinations < 0 {
		return fmt.Errorf("egress: Config.MaxDestinations %d: must not be negative", c.MaxDestinations)
	}
	return nil
}

// builtinDenyRanges are refused on top of smokescreen's own classification,
// which already refuses loopback, link-local (169.254.0.0/16, fe80::/10, so
// the 169.254.169.254 metadata address), multicast, unspecified, RFC 1918 and
// fc00::/7 (so fd00:ec2::254), CGNAT (100.64.0.0/10, so 100.100.100.200) and
// IPv6 prefixes embedding IPv4 (NAT64, 6to4, Teredo). The ranges below repeat
// the CGNAT and link-local ones so that they hold even if smokescreen's
// defaults change, and add what Go's IsGlobalUnicast lets through: "this
// network", IETF protocol assignments (192.0.0.192 is a metadata address),
// reserved and broadcast addresses. Documentation and benchmarking ranges
// are not refused: some networks route egress through them (an operator can
// add them with Config.DenyRanges).
// IPv4-mapped IPv6 addresses are classified as the IPv4 address they carry.
var builtinDenyRanges = []string{
	"0.0.0.0/8",          // "this network"
	"100.64.0.0/10",      // CGNAT
	"169.254.0.0/16",     // link-local, cloud metadata
	"192.0.0.0/24",       // IETF protocol assignments
	"240.0.0.0/4",        // reserved
	"255.255.255.255/32", // broadcast
	// Not ::ffff:0:0/96: Go's IPNet reads that as 0.0.0.0/0 and would deny
	// every IPv4 address; mapped addresses are classified as the IPv4
	// address they carry.
	"64:ff9b::/96",   // NAT64
	"64:ff9b:1::/48", // local NAT64
	"100::/64",       // discard
	"fc00::/7",       // unique local
	"fe80::/10",      // link-local
}

// upstreamProxyHeader is the header with which a smokescreen client may ask
// to chain through another proxy; jobs may not.
var upstreamProxyHeader = goproxy.PerRequestHTTPSProxyHeaderKey

// Proxy serves the egress of every job of one worker process.
//
// It runs ONE smokescreen instance (one goproxy handler under one
// http.Server) for all jobs: smokescreen's API lets the embedder serve its
// handler on any listener, so each Session has its own net.Listener on its
// veth address, and its accepted connections are fed into a single listener
// of our own that the http.Server serves. One instance means one transport,
// one logrus bridge and one set of range rules per process instead of a copy
// per job, and registering a job costs only a listener. Jobs are told apart
// per request by smokescreen's RoleFromRequest, from the request's source
// address, and each request is decided by that job's own Policy through a
// custom acl.Decider; there is no global allowlist.
type Proxy struct {
	cfg Config
	log *slog.Logger
	srv *http.Server
	mux *muxListener

	serveDone chan struct{}

	mu       sync.Mutex
	closed   bool
	sessions map[string]*Session     // by job ID
	bySrc    map[netip.Addr]*Session // by source address
}

// New builds a Proxy and starts its server. It listens on nothing until a
// job is registered.
func New(cfg Config) (*Proxy, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "egress"),
		mux:       newMuxListener(),
		serveDone: make(chan struct{}),
		sessions:  map[string]*Session{},
		bySrc:     map[netip.Addr]*Session{},
	}

	// The Config is built by hand rather than with smokescreen.NewConfig,
	// which changes the process-wide logrus formatter.
	sc := &smokescreen.Config{
		Resolver:                     cfg.Resolver,
		Log:                          newLogrusBridge(p.log),
		ConnectTimeout:               DefaultConnectTimeout, // replaced per job in dialUpstream
		MetricsClient:                metrics.NewNoOpMetricsClient(),
		EgressACL:                    decider{p},
		RoleFromRequest:              p.roleFromRequest,
		Network:                      smokescreen.DefaultNetwork,
		DNSTimeout:                   cfg.DNSTimeout,
		RejectResponseHandlerWithCtx: p.onReject,
		ProxyDialTimeout:             p.dialUpstream,
		// IdleTimeout stays 0: idle and total timeouts are per job, on
		// the job's side of each connection (clientConn), which tears
		// the tunnel down with it.
	}
	sc.ConnTracker = conntrack.NewTracker(0, sc.MetricsClient, sc.Log, atomic.Value{}, nil)
	if err := sc.SetDenyRanges(builtinDenyRanges); err != nil {
		return nil, fmt.Errorf("egress: built-in deny ranges: %w", err)
	}
	if err := sc.SetDenyRanges(cfg.DenyRanges); err != nil {
		return nil, fmt.Errorf("egress: Config.DenyRanges: %w", err)
	}
	if local := hostAddrs(p.log); len(local) > 0 {
		// The worker host's own addresses: a job must not reach the
		// host's services through a name that points at its public IP.
		if err := sc.SetDenyAddresses(local); err != nil {
			return nil, fmt.Errorf("egress: host addresses: %w", err)
		}
	}
	if err := sc.SetAllowRanges(cfg.AllowRanges); err != nil {
		return nil, fmt.Errorf("egress: Config.AllowRanges: %w", err)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("egress: smokescreen config: %w", err)
	}

	gp := smokescreen.BuildProxy(sc)
	gp.Logger = log.New(&logWriter{log: p.log, msg: "goproxy"}, "", 0)
	gp.NonproxyHandler = http.HandlerFunc(p.nonProxy)
	// goproxy's transport reads HTTP_PROXY from the environment and skips
	// TLS verification; the egress proxy chains to no other proxy, and
	// plain proxying is for http:// only (https goes through CONNECT).
	gp.Tr.Proxy = nil
	gp.Tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	// No upstream connection is reused: each request dials (and is
	// accounted to its job) on its own.
	gp.Tr.DisableKeepAlives = true
	gp.Tr.DialContext = p.guardDial(gp.Tr.DialContext)

	p.srv = &http.Server{
		Handler:           p.handler(gp),
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if cc, ok := c.(*clientConn); ok {
				ctx = context.WithValue(ctx, clientConnKey{}, cc)
			}
			return ctx
		},
	}
	go func() {
		defer close(p.serveDone)
		if err := p.srv.Serve(p.mux); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			p.log.Error("egress server stopped", "err", err)
		}
	}()
	for _, k := range []string{"HTTPS_PROXY", "https_proxy"} {
		if v, ok := os.LookupEnv(k); ok && v != "" {
			p.log.Warn("the worker's environment sets "+k+"; the egress proxy does not chain to other proxies, so CONNECT tunnels will fail unless NO_PROXY excludes their hosts", "env", k)
		}
	}
	return p, nil
}

// Close stops every session and the server.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	sessions := make([]*Session, 0, len(p.sessions))
	for _, s := range p.sessions {
		sessions = append(sessions, s)
	}
	p.mu.Unlock()

	for _, s := range sessions {
		s.Close()
	}
	err := p.srv.Close()
	<-p.serveDone
	if err != nil {
		return fmt.Errorf("egress: closing server: %w", err)
	}
	return nil
}

// handler wraps smokescreen's: it finds the job, counts the request in its
// session, and records the request's event when smokescreen is done with it.
func (p *Proxy) handler(gp http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := p.sessionFor(r)
		if err != nil {
			p.log.Warn("egress request from no registered job", "remote", r.RemoteAddr, "err", err)
			w.Header().Set("Connection", "close")
			http.Error(w, "sandq egress: this connection belongs to no job", http.StatusForbidden)
			return
		}
		if !s.begin() {
			w.Header().Set("Connection", "close")
			http.Error(w, "sandq egress: this job's egress is closed", http.StatusForbidden)
			return
		}
		defer s.end()

		rec := newRecord(s, r)
		r = r.WithContext(context.WithValue(r.Context(), recordKey{}, rec))
		// A CONNECT hijacks w; a plain request is counted on its upstream
		// connection (see record.finish).
		gp.ServeHTTP(w, r)
		rec.finish()
	})
}

// nonProxy answers requests that are not proxy requests (origin-form URLs).
func (p *Proxy) nonProxy(w http.ResponseWriter, r *http.Request) {
	reason := "only proxy requests (CONNECT or an absolute http:// URL) are served"
	if rec := recordFrom(r.Context()); rec != nil {
		rec.outcome(DecisionRefused, reason)
	}
	http.Error(w, "sandq egress: "+reason, http.StatusBadRequest)
}

// sessionFor identifies the job of a request by its source address, and
// checks that the connection was accepted by that job's listener.
func (p *Proxy) sessionFor(r *http.Request) (*Session, error) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return nil, fmt.Errorf("source address %q: %w", r.RemoteAddr, err)
	}
	p.mu.Lock()
	s := p.bySrc[ap.Addr().Unmap()]
	p.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("no job is registered for source %s", ap.Addr())
	}
	if c, _ := r.Context().Value(clientConnKey{}).(*clientConn); c == nil || c.s != s {
		return nil, fmt.Errorf("connection from %s was not accepted for job %s", ap.Addr(), s.id)
	}
	return s, nil
}

// roleFromRequest is smokescreen's RoleFromRequest: the role is the job ID.
func (p *Proxy) roleFromRequest(r *http.Request) (string, error) {
	s, err := p.sessionFor(r)
	if err != nil {
		return "", smokescreen.MissingRoleError(err.Error())
	}
	return s.id, nil
}

func (p *Proxy) session(jobID string) *Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sessions[jobID]
}

// decider is the acl.Decider: each request is decided by its job's Policy.
type decider struct{ p *Proxy }

var _ acl.Decider = decider{}

func (d decider) Decide(args acl.DecideArgs) (acl.Decision, error) {
	deny := func(reason string) (acl.Decision, error) {
		return acl.Decision{Result: acl.Deny, Reason: reason}, nil
	}
	if args.Req == nil {
		return deny("request without a job")
	}
	rec := recordFrom(args.Req.Context())
	s := d.p.session(args.Service)
	if rec == nil || s == nil || rec.s != s {
		return deny("request without a job")
	}
	host, port, allowed, reason := s.decide(args.Req, args.Host, args.ConnectProxyHost)
	rec.decided(host, port, allowed, reason)
	if !allowed {
		return deny(reason)
	}
	return acl.Decision{Result: acl.Allow, Reason: reason, Project: s.id}, nil
}

// decide applies the session's policy to one request. host is smokescreen's
// normalized destination host.
func (s *Session) decide(r *http.Request, host, connectProxy string) (string, int, bool, string) {
	var (
		dest hostport.HostPort
		err  error
	)
	if r.Method == http.MethodConnect {
		dest, err = hostport.New(r.Host, false)
	} else {
		if r.URL.Scheme != "http" {
			return host, 0, false, fmt.Sprintf("scheme %q is not proxied; use CONNECT for https", r.URL.Scheme)
		}
		dest, err = hostport.NewWithScheme(r.Host, r.URL.Scheme, false)
	}
	if err != nil {
		return host, 0, false, fmt.Sprintf("destination %q is not valid: %v", r.Host, err)
	}
	port := dest.Port
	if connectProxy != "" {
		return host, port, false, "chaining to another proxy (" + upstreamProxyHeader + ") is not allowed"
	}
	name, err := hostpattern.NormalizeHost(host)
	switch {
	case errors.Is(err, hostpattern.ErrIPLiteral):
		return host, port, false, ipLiteralReason(host)
	case err != nil:
		return host, port, false, fmt.Sprintf("host %q is not a valid name", host)
	}
	pattern, ok := s.pol.match(name)
	if !ok {
		return name, port, false, fmt.Sprintf("host %q is not in this job's allowlist", name)
	}
	if !s.pol.allowsPort(port) {
		return name, port, false, fmt.Sprintf("port %d of host %q is not in this job's allowed ports %v", port, name, s.pol.ports)
	}
	return name, port, true, fmt.Sprintf("host %q matches %q", name, pattern)
}

func ipLiteralReason(host string) string {
	return fmt.Sprintf("host %q is an IP address; this job may reach only the names in its allowlist", host)
}

// onReject is smokescreen's RejectResponseHandlerWithCtx, called for every
// response smokescreen makes up itself: refusals (407 from smokescreen,
// turned into 403 here) and failures to reach upstream (5xx).
func (p *Proxy) onReject(sctx *smokescreen.SmokescreenContext, resp *http.Response) {
	var rec *record
	if resp.Request != nil {
		rec = recordFrom(resp.Request.Context())
	}
	detail := resp.Header.Get("X-Smokescreen-Error")
	resp.Header.Del("X-Smokescreen-Error")
	var smokeReason string
	if sctx != nil && sctx.Decision != nil {
		smokeReason = sctx.Decision.Reason
	}
	host := ""
	if rec != nil {
		host = rec.hostName()
	}

	if resp.StatusCode == http.StatusProxyAuthRequired {
		var reason string
		switch {
		case rec == nil:
			reason = "request refused: " + detail
		case rec.refusal() != "":
			reason = rec.refusal()
		case rec.policyAllowed():
			// The policy allowed the name; smokescreen refused the
			// addresses it resolves to.
			reason = fmt.Sprintf("host %q resolves only to addresses this proxy does not reach (%s)", host, strings.TrimSuffix(smokeReason, ". "))
		case hostpattern.IsIPLiteral(host):
			reason = ipLiteralReason(host)
		default:
			if smokeReason == "" {
				smokeReason = detail
			}
			reason = fmt.Sprintf("request for %q refused: %s", host, smokeReason)
		}
		if rec != nil {
			rec.outcome(DecisionRefused, reason)
		}
		setResponse(resp, http.StatusForbidden, "sandq egress: "+reason+"\n")
		return
	}
	reason := fmt.Sprintf("could not reach %q: %s", host, detail)
	if rec != nil {
		rec.outcome(DecisionFailed, reason)
	}
	setResponse(resp, resp.StatusCode, "sandq egress: "+reason+"\n")
}

func setResponse(resp *http.Response, code int, body string) {
	resp.StatusCode = code
	resp.Status = strconv.Itoa(code) + " " + http.StatusText(code)
	resp.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp.TransferEncoding = nil
	resp.ContentLength = int64(len(body))
	resp.Body = http.NoBody
	if body != "" {
		resp.Body = nopCloser{strings.NewReader(body)}
	}
}

// dialUpstream is smokescreen's ProxyDialTimeout: it dials the address
// smokescreen resolved and checked, with the job's connect timeout.
func (p *Proxy) dialUpstream(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	if rec := recordFromDial(ctx); rec != nil {
		timeout = rec.s.lim.ConnectTimeout
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, network, address)
}

// errUnchecked is returned when something asks the transport to dial an
// address other than the one the job's request was decided for — goproxy
// does when the environment names an upstream proxy.
var errUnchecked = errors.New("refusing to dial an address that was not checked for this request (the egress proxy does not chain to other proxies)")

// guardDial wraps smokescreen's dialer (the goproxy transport's
// DialContext): it dials only the destination that was decided, and wraps
// the upstream connection so that the session can account for it and close
// it.
func (p *Proxy) guardDial(inner func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		pctx, _ := ctx.Value(goproxy.ProxyContextKey).(*goproxy.ProxyCtx)
		if pctx == nil || pctx.Req == nil {
			return nil, errUnchecked
		}
		rec := recordFrom(pctx.Req.Context())
		sctx, _ := pctx.UserData.(*smokescreen.SmokescreenContext)
		if rec == nil || sctx == nil || sctx.Decision == nil || !sameHostPort(addr, sctx.Decision.OutboundHost) {
			return nil, errUnchecked
		}
		conn, err := inner(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		f, err := rec.s.addFlow(conn, rec)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return f, nil
	}
}

// sameHostPort compares two host:port strings, ignoring case and a trailing
// dot.
func sameHostPort(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp {
		return false
	}
	return strings.EqualFold(strings.TrimSuffix(ah, "."), strings.TrimSuffix(bh, "."))
}

func recordFromDial(ctx context.Context) *record {
	pctx, _ := ctx.Value(goproxy.ProxyContextKey).(*goproxy.ProxyCtx)
	if pctx == nil || pctx.Req == nil {
		return nil
	}
	return recordFrom(pctx.Req.Context())
}

// hostAddrs lists this host's global unicast addresses (hostpattern.HostAddrs).
func hostAddrs(logger *slog.Logger) []string {
	addrs, err := hostpattern.HostAddrs()
	if err != nil {
		logger.Warn("listing the host's addresses to refuse them", "err", err)
		return nil
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
