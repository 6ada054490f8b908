package egress

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Register after Close.
var ErrClosed = errors.New("egress: proxy is closed")

// drainTimeout bounds how long Session.Close waits for the job's requests
// in flight to finish once their connections are closed.
const drainTimeout = 5 * time.Second

// Session is one job's egress: its listener, its connections and its audit.
type Session struct {
	p    *Proxy
	id   string
	src  netip.Addr
	addr netip.AddrPort
	pol  *policy
	lim  Limits
	ln   net.Listener
	log  *slog.Logger

	bytes      atomic.Int64  // both directions, all connections
	done       chan struct{} // closed when Close starts
	acceptDone chan struct{} // closed when the accept loop has returned
	finished   chan struct{} // closed when Close is done

	mu        sync.Mutex
	closed    bool
	overBytes bool
	inflight  int           // requests being handled
	drained   chan struct{} // closed when inflight drops to 0 after Close
	conns     map[*clientConn]struct{}
	flows     map[*flow]struct{}
	audit     *auditLog
	final     *Audit // the audit as of Close; nil before
}

// Register starts serving a job: a listener on listen (e.g. 10.200.0.1:3128;
// port 0 picks a free port, see Session.Addr) that accepts only connections
// whose source address is src, and whose requests are decided by pol.
// A job ID and a source address can each be registered once at a time.
func (p *Proxy) Register(jobID string, listen netip.AddrPort, src netip.Addr, pol Policy, lim Limits) (*Session, error) {
	if jobID == "" {
		return nil, errors.New("egress: job ID is empty")
	}
	if !listen.IsValid() {
		return nil, fmt.Errorf("egress: job %s: listen address is not valid", jobID)
	}
	if !src.IsValid() {
		return nil, fmt.Errorf("egress: job %s: source address is not valid", jobID)
	}
	src = src.Unmap()
	cp, err := compilePolicy(pol)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", jobID, err)
	}
	lim = lim.WithDefaults()
	if err := lim.validate(); err != nil {
		return nil, fmt.Errorf("job %s: %w", jobID, err)
	}
	if err := p.checkFree(jobID, src); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", listen.String())
	if err != nil {
		return nil, fmt.Errorf("egress: job %s: listening on %s: %w", jobID, listen, err)
	}
	bound, _ := netip.ParseAddrPort(ln.Addr().String())
	s := &Session{
		p:          p,
		id:         jobID,
		src:        src,
		addr:       bound,
		pol:        cp,
		lim:        lim,
		ln:         ln,
		log:        p.log.With("job_id", jobID),
		audit:      newAuditLog(p.cfg.MaxEvents, p.cfg.MaxDestinations),
		done:       make(chan struct{}),
		acceptDone: make(chan struct{}),
		finished:   make(chan struct{}),
		conns:      map[*clientConn]struct{}{},
		flows:      map[*flow]struct{}{},
	}

	p.mu.Lock()
	if err := p.checkFreeLocked(jobID, src); err != nil {
		p.mu.Unlock()
		ln.Close()
		return nil, err
	}
	p.sessions[jobID] = s
	p.bySrc[src] = s
	p.mu.Unlock()

	go s.acceptLoop()
	s.log.Info("egress session started", "listen", s.addr.String(), "source", src.String(), "hosts", cp.patterns, "ports", cp.ports)
	return s, nil
}

func (p *Proxy) checkFree(jobID string, src netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkFreeLocked(jobID, src)
}

func (p *Proxy) checkFreeLocked(jobID string, src netip.Addr) error {
	if p.closed {
		return ErrClosed
	}
	if _, dup := p.sessions[jobID]; dup {
		return fmt.Errorf("egress: job %s is already registered", jobID)
	}
	if other, dup := p.bySrc[src]; dup {
		return fmt.Errorf("egress: job %s: source %s is already registered for job %s", jobID, src, other.id)
	}
	return nil
}

func (p *Proxy) unregister(s *Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sessions[s.id] == s {
		delete(p.sessions, s.id)
	}
	if p.bySrc[s.src] == s {
		delete(p.bySrc, s.src)
	}
}

// ID is the job's ID.
func (s *Session) ID() string { return s.id }

// Addr is the address the session listens on.
func (s *Session) Addr() netip.AddrPort { return s.addr }

// Audit returns a copy of the audit so far. A tunnel is recorded when it
// closes, so open tunnels are not in it yet.
func (s *Session) Audit() Audit {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.final != nil {
		return cloneAudit(*s.final)
	}
	return s.audit.snapshot()
}

// Events returns the events the audit lists so far (Audit.Events).
func (s *Session) Events() []Event { return s.Audit().Events }

func cloneAudit(a Audit) Audit {
	a.Events = slices.Clone(a.Events)
	a.Destinations = slices.Clone(a.Destinations)
	a.Refusals = slices.Clone(a.Refusals)
	if o := a.OtherDestinations; o != nil {
		c := *o
		a.OtherDestinations = &c
	}
	if o := a.OtherRefusals; o != nil {
		c := *o
		a.OtherRefusals = &c
	}
	return a
}

// Close stops the listener, closes the job's connections and tunnels, and
// returns the final audit. It is idempotent.
func (s *Session) Close() Audit {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.finished
		return s.Audit()
	}
	s.closed = true
	close(s.done)
	var drained chan struct{}
	if s.inflight > 0 {
		s.drained = make(chan struct{})
		drained = s.drained
	}
	s.mu.Unlock()

	s.p.unregister(s)
	if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("closing egress listener", "err", err)
	}
	<-s.acceptDone
	s.closeAll("session closed")
	if drained != nil {
		t := time.NewTimer(drainTimeout)
		select {
		case <-drained:
		case <-t.C:
			s.log.Warn("egress requests still in flight after close", "wait", drainTimeout)
		}
		t.Stop()
	}

	s.mu.Lock()
	final := s.audit.snapshot()
	s.final = &final
	s.mu.Unlock()
	close(s.finished)
	s.log.Info("egress session closed", "allowed", final.Allowed, "refused", final.Refused, "failed", final.Failed,
		"bytes_out", final.BytesOut, "bytes_in", final.BytesIn, "unlisted", final.Unlisted, "bytes", s.bytes.Load())
	return cloneAudit(final)
}

func (s *Session) record(ev Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(ev)
}

func (s *Session) recordLocked(ev Event) {
	if s.final != nil {
		s.log.Warn("egress event after the audit was closed", "host", ev.Host, "port", ev.Port, "method", ev.Method,
			"decision", ev.Decision, "reason", ev.Reason, "bytes_out", ev.BytesOut, "bytes_in", ev.BytesIn)
		return
	}
	s.audit.add(ev)
	s.log.Debug("egress event", "host", ev.Host, "port", ev.Port, "method", ev.Method,
		"decision", ev.Decision, "reason", ev.Reason, "bytes_out", ev.BytesOut, "bytes_in", ev.BytesIn)
}

// acceptLoop accepts the job's connections and hands them to the server.
func (s *Session) acceptLoop() {
	defer close(s.acceptDone)
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting egress connection", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.done:
				return
			}
		}
		delay = 0
		if !s.fromSource(nc) {
			s.log.Warn("egress connection from a foreign source dropped", "remote", nc.RemoteAddr().String(), "source", s.src.String())
			nc.Close()
			continue
		}
		c := s.admit(nc)
		if c == nil {
			nc.Close()
			continue
		}
		if !s.p.mux.deliver(c, s.done) {
			c.Close()
		}
	}
}

func (s *Session) fromSource(nc net.Conn) bool {
	ta, ok := nc.RemoteAddr().(*net.TCPAddr)
	return ok && ta.AddrPort().Addr().Unmap() == s.src
}

// admit registers a new connection of the job, or refuses it.
func (s *Session) admit(nc net.Conn) *clientConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var reason string
	switch {
	case s.closed:
		return nil
	case s.overBytes:
		reason = fmt.Sprintf("connection refused: the job passed its limit of %d bytes", s.lim.MaxBytes)
	case len(s.conns) >= s.lim.MaxConns:
		reason = fmt.Sprintf("connection refused: the job already has %d connections open (the limit)", s.lim.MaxConns)
	}
	if reason != "" {
		s.recordLocked(refusedConn(reason))
		return nil
	}
	c := newClientConn(s, nc)
	s.conns[c] = struct{}{}
	c.startTimers()
	return c
}

func (s *Session) dropConn(c *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// begin counts a request in flight, unless the session is closed.
func (s *Session) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.overBytes {
		return false
	}
	s.inflight++
	return true
}

func (s *Session) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	if s.inflight == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
}

// addBytes counts traffic of the job's connections against MaxBytes.
func (s *Session) addBytes(n int) {
	if s.bytes.Add(int64(n)) > s.lim.MaxBytes {
		s.tripBytes()
	}
}

func (s *Session) tripBytes() {
	s.mu.Lock()
	if s.overBytes || s.closed {
		s.mu.Unlock()
		return
	}
	s.overBytes = true
	s.recordLocked(refusedConn(fmt.Sprintf("the job passed its limit of %d bytes: its connections are closed and new ones refused", s.lim.MaxBytes)))
	s.mu.Unlock()
	s.log.Warn("egress byte limit reached; closing the job's connections", "max_bytes", s.lim.MaxBytes)
	s.closeAll("byte limit reached")
}

// closeAll closes the job's connections and upstream connections.
func (s *Session) closeAll(reason string) {
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	flows := make([]*flow, 0, len(s.flows))
	for f := range s.flows {
		flows = append(flows, f)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeFor(reason)
	}
	for _, f := range flows {
		f.closeFor(reason)
	}
}

// addFlow registers an upstream connection made for rec.
func (s *Session) addFlow(conn net.Conn, rec *record) (*flow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.overBytes {
		return nil, errors.New("the job's egress is closed")
	}
	f := &flow{Conn: conn, s: s, rec: rec}
	s.flows[f] = struct{}{}
	rec.attach(f, conn.RemoteAddr())
	return f, nil
}

// flowDone forgets an upstream connection and, for a tunnel, records its
// event.
func (s *Session) flowDone(f *flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.flows, f)
	if ev, ok := f.rec.tunnelEvent(f); ok {
		s.recordLocked(ev)
	}
}

// clientConn is one connection from the job to the proxy. It counts bytes
// against the job's MaxBytes and enforces the idle and total timeouts.
type clientConn struct {
	net.Conn
	s    *Session
	last atomic.Int64 // unix nanoseconds of the last byte either way
	why  atomic.Pointer[string]

	tmu   sync.Mutex
	idle  *time.Timer
	total *time.Timer

	once sync.Once
	err  error
}

func newClientConn(s *Session, nc net.Conn) *clientConn {
	c := &clientConn{Conn: nc, s: s}
	c.last.Store(time.Now().UnixNano())
	return c
}

func (c *clientConn) startTimers() {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	c.idle = time.AfterFunc(c.s.lim.IdleTimeout, c.checkIdle)
	c.total = time.AfterFunc(c.s.lim.TotalTimeout, func() { c.closeFor("total timeout") })
}

func (c *clientConn) checkIdle() {
	idle := c.s.lim.IdleTimeout
	since := time.Since(time.Unix(0, c.last.Load()))
	if since >= idle {
		c.closeFor("idle timeout")
		return
	}
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if c.idle != nil {
		c.idle.Reset(idle - since)
	}
}

func (c *clientConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
		c.s.addBytes(n)
	}
	return n, err
}

func (c *clientConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
		c.s.addBytes(n)
	}
	return n, err
}

// closeFor closes the connection, remembering why for the audit.
func (c *clientConn) closeFor(reason string) {
	c.why.CompareAndSwap(nil, &reason)
	c.Close()
}

func (c *clientConn) Close() error {
	c.once.Do(func() {
		c.tmu.Lock()
		if c.idle != nil {
			c.idle.Stop()
			c.total.Stop()
			c.idle = nil
		}
		c.tmu.Unlock()
		c.err = c.Conn.Close()
		c.s.dropConn(c)
		if why := c.why.Load(); why != nil {
			c.s.log.Debug("egress connection closed", "remote", c.RemoteAddr().String(), "why", *why)
		}
	})
	return c.err
}

func (c *clientConn) reason() string {
	if why := c.why.Load(); why != nil {
		return *why
	}
	return ""
}

// flow is one upstream connection, counting bytes each way.
type flow struct {
	net.Conn
	s   *Session
	rec *record
	in  atomic.Int64 // upstream -> job
	out atomic.Int64 // job -> upstream
	why atomic.Pointer[string]
	// rmu and wmu are held through each read and write and its count: a
	// write's bytes may be answered (and the request finished) before the
	// writing goroutine has counted them.
	rmu, wmu sync.Mutex

	once sync.Once
	err  error
}

func (f *flow) Read(b []byte) (int, error) {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	n, err := f.Conn.Read(b)
	f.in.Add(int64(n))
	return n, err
}

func (f *flow) Write(b []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	n, err := f.Conn.Write(b)
	f.out.Add(int64(n))
	return n, err
}

// counts are the bytes out and in, once the reads and writes in progress
// have returned. Call it after Close, which makes them return.
func (f *flow) counts() (out, in int64) {
	f.wmu.Lock()
	f.rmu.Lock()
	defer f.rmu.Unlock()
	defer f.wmu.Unlock()
	return f.out.Load(), f.in.Load()
}

func (f *flow) closeFor(reason string) {
	f.why.CompareAndSwap(nil, &reason)
	f.Close()
}

func (f *flow) Close() error {
	f.once.Do(func() {
		f.err = f.Conn.Close()
		f.s.flowDone(f)
	})
	return f.err
}

// record follows one request through smokescreen: the decider, the dialer
// and the reject handler fill it in, and it becomes the request's event.
type record struct {
	s      *Session
	client *clientConn
	start  time.Time
	method string

	mu            sync.Mutex
	host          string
	port          int
	policyDecided bool
	allowed       bool
	policyReason  string
	decision      string // refused or failed, set by outcome
	reason        string
	flow          *flow
	upstream      string
}

func newRecord(s *Session, r *http.Request) *record {
	rec := &record{s: s, start: time.Now(), method: r.Method}
	rec.client, _ = r.Context().Value(clientConnKey{}).(*clientConn)
	hostPort := r.Host
	if r.Method != http.MethodConnect && r.URL.Host != "" {
		hostPort = r.URL.Host
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		host = hostPort
		if r.Method != http.MethodConnect && r.URL.Scheme == "http" {
			port = "80"
		}
	}
	rec.host = strings.ToLower(strings.Trim(host, "[]"))
	rec.port, _ = strconv.Atoi(port)
	return rec
}

// decided notes the policy's decision.
func (r *record) decided(host string, port int, allowed bool, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.host, r.port = host, port
	r.policyDecided, r.allowed, r.policyReason = true, allowed, reason
}

// outcome notes a refusal or failure after (or instead of) the policy.
func (r *record) outcome(decision, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.decision == "" {
		r.decision, r.reason = decision, reason
	}
}

func (r *record) attach(f *flow, upstream net.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flow = f
	if upstream != nil {
		r.upstream = upstream.String()
	}
}

func (r *record) hostName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.host
}

// refusal is the policy's reason for refusing, if it refused.
func (r *record) refusal() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.policyDecided && !r.allowed {
		return r.policyReason
	}
	return ""
}

func (r *record) policyAllowed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.allowed
}

// finish records the request's event when the handler returns, except for
// an established tunnel, which is recorded when it closes.
func (r *record) finish() {
	r.mu.Lock()
	f := r.flow
	if f != nil && r.method == http.MethodConnect && r.decision == "" {
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	if f != nil {
		// The handler is done with the request: close its upstream
		// connection (never reused) so that its counts are final. A plain
		// request is counted there, as exchanged with upstream: the
		// transport may still be writing its body when the response is
		// back, and data in the URL and headers counts too.
		f.Close()
	}

	r.mu.Lock()
	ev := Event{Time: r.start, Host: r.host, Port: r.port, Method: r.method}
	if f != nil {
		ev.BytesOut, ev.BytesIn = f.counts()
	}
	switch {
	case r.decision != "":
		ev.Decision, ev.Reason = r.decision, r.reason
	case r.allowed && r.flow != nil:
		ev.Decision = DecisionAllowed
		ev.Reason = r.allowedReasonLocked()
	case r.policyDecided && !r.allowed:
		ev.Decision, ev.Reason = DecisionRefused, r.policyReason
	default:
		ev.Decision, ev.Reason = DecisionRefused, "request was not proxied"
	}
	if r.client != nil && r.client.reason() != "" {
		ev.Reason += "; closed by the proxy: " + r.client.reason()
	}
	r.mu.Unlock()
	r.s.record(ev)
}

func (r *record) allowedReasonLocked() string {
	reason := r.policyReason
	if r.upstream != "" {
		reason += "; connected to " + r.upstream
	}
	return reason
}

// tunnelEvent is the event of a closed CONNECT tunnel.
func (r *record) tunnelEvent(f *flow) (Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.method != http.MethodConnect || r.decision != "" {
		return Event{}, false
	}
	reason := r.allowedReasonLocked()
	why := ""
	if w := f.why.Load(); w != nil {
		why = *w
	} else if r.client != nil {
		why = r.client.reason()
	}
	if why != "" {
		reason += "; closed by the proxy: " + why
	}
	out, in := f.counts()
	return Event{
		Time:     r.start,
		Host:     r.host,
		Port:     r.port,
		Method:   r.method,
		Decision: DecisionAllowed,
		Reason:   reason,
		BytesOut: out,
		BytesIn:  in,
	}, true
}
