package egress

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/hostpattern"
	"github.com/sandq/sandq/internal/testenv"
)

// testResolver maps test names to loopback, like a hosts file.
type testResolver = testenv.Resolver

var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

func newResolver() testResolver {
	return testResolver{
		"allowed.test":   loopback,
		"a.allowed.test": loopback,
		"other.test":     loopback,
		"evil.example":   loopback,
	}
}

// upstream is a loopback HTTP or HTTPS server that counts its requests.
type upstream struct {
	*httptest.Server
	port int
	hits atomic.Int64
}

func upstreamHandler(u *upstream) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		io.WriteString(w, "hello from upstream")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		io.WriteString(w, r.Host)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(1<<20))
		w.Write(bytes.Repeat([]byte("x"), 1<<20))
	})
	return mux
}

func newUpstream(t *testing.T, useTLS bool) *upstream {
	t.Helper()
	u := &upstream{}
	if useTLS {
		u.Server = httptest.NewTLSServer(upstreamHandler(u))
	} else {
		u.Server = httptest.NewServer(upstreamHandler(u))
	}
	t.Cleanup(u.Close)
	u.port = u.Listener.Addr().(*net.TCPAddr).Port
	return u
}

// tcpServer serves each connection with handle, on loopback.
func tcpServer(t *testing.T, handle func(net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}

func echoServer(t *testing.T) int {
	return tcpServer(t, func(c net.Conn) { io.Copy(c, c) })
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newProxy makes a Proxy that resolves the test names; allowLoopback lets it
// reach loopback servers, as production never does.
func newProxy(t *testing.T, allowLoopback bool, tweak ...func(*Config)) *Proxy {
	t.Helper()
	cfg := Config{Logger: testLogger(t), Resolver: newResolver()}
	if allowLoopback {
		cfg.AllowRanges = []string{"127.0.0.0/8"}
	}
	for _, f := range tweak {
		f(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Proxy.Close: %v", err)
		}
	})
	return p
}

var (
	anyLoopback = netip.MustParseAddrPort("127.0.0.1:0")
	clientAddr  = netip.MustParseAddr("127.0.0.1")
)

func register(t *testing.T, p *Proxy, pol Policy, lim Limits) *Session {
	t.Helper()
	s, err := p.Register("job-"+t.Name(), anyLoopback, clientAddr, pol, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func proxyURL(s *Session) *url.URL { return &url.URL{Scheme: "http", Host: s.Addr().String()} }

// client is an HTTP client that goes through the session's proxy.
func client(s *Session, tlsUp *upstream) *http.Client {
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL(s)), DisableKeepAlives: true}
	if tlsUp != nil {
		pool := x509.NewCertPool()
		pool.AddCert(tlsUp.Certificate())
		// httptest's certificate names example.com; the tunnel goes to
		// allowed.test, which the test resolver maps to the server.
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, ServerName: "example.com"}
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// raw sends one raw request on a new connection to the proxy and reads the
// response.
func raw(t *testing.T, s *Session, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, body, err := roundTrip(c, bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	return resp, body
}

func roundTrip(c net.Conn, br *bufio.Reader, req string) (*http.Response, string, error) {
	if _, err := io.WriteString(c, req); err != nil {
		return nil, "", err
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		return resp, "", nil
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func connectReq(hostport string) string {
	return fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
}

func getReq(rawURL string) string {
	u, _ := url.Parse(rawURL)
	host := rawURL
	if u != nil {
		host = u.Host
	}
	return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", rawURL, host)
}

// waitEvents polls the session's audit until ok accepts it.
func waitEvents(t *testing.T, s *Session, ok func([]Event) bool) []Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs := s.Events()
		if ok(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit never got what was expected; it is:\n%s", dump(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countEvents(n int) func([]Event) bool {
	return func(evs []Event) bool { return len(evs) >= n }
}

func dump(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "  %s %s:%d %s: %s (out %d, in %d)\n", ev.Method, ev.Host, ev.Port, ev.Decision, ev.Reason, ev.BytesOut, ev.BytesIn)
	}
	return b.String()
}

func wantRefused(t *testing.T, resp *http.Response, body string, wantBody ...string) {
	t.Helper()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status = %s, want 403 (body %q)", resp.Status, body)
	}
	if !strings.HasPrefix(body, "sandq egress: ") {
		t.Errorf("body = %q, want it to start with %q", body, "sandq egress: ")
	}
	for _, w := range wantBody {
		if !strings.Contains(body, w) {
			t.Errorf("body = %q, want it to contain %q", body, w)
		}
	}
}

func TestPlainHTTPAllowed(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})
	c := client(s, nil)

	resp, err := c.Get(fmt.Sprintf("http://allowed.test:%d/hello", up.port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello from upstream" {
		t.Fatalf("GET = %s %q", resp.Status, body)
	}

	payload := strings.Repeat("ping ", 100)
	resp, err = c.Post(fmt.Sprintf("http://ALLOWED.test.:%d/echo", up.port), "text/plain", strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != payload {
		t.Fatalf("POST = %s %q", resp.Status, body)
	}

	evs := waitEvents(t, s, countEvents(2))
	get, post := evs[0], evs[1]
	if get.Decision != DecisionAllowed || get.Method != "GET" || get.Host != "allowed.test" || get.Port != up.port {
		t.Errorf("GET event = %+v", get)
	}
	// Bytes are counted as exchanged with upstream: request line and
	// headers out, status line, headers and body in.
	if get.BytesIn < int64(len("HTTP/1.1 200 OK\r\n\r\nhello from upstream")) || get.BytesOut < int64(len("GET /hello HTTP/1.1\r\n\r\n")) {
		t.Errorf("GET event bytes out %d in %d, want a request and a response with %d bytes of body", get.BytesOut, get.BytesIn, len("hello from upstream"))
	}
	if !strings.Contains(get.Reason, `matches "allowed.test"`) || !strings.Contains(get.Reason, "127.0.0.1:") {
		t.Errorf("GET event reason = %q", get.Reason)
	}
	if post.Decision != DecisionAllowed || post.Method != "POST" || post.Host != "allowed.test" {
		t.Errorf("POST event = %+v", post)
	}
	if post.BytesOut < int64(len(payload)+len("POST /echo HTTP/1.1\r\n\r\n")) || post.BytesIn < int64(len(payload)+len("HTTP/1.1 200 OK\r\n\r\n")) {
		t.Errorf("POST event bytes out %d in %d, want more than the %d bytes of body each way", post.BytesOut, post.BytesIn, len(payload))
	}
	if up.hits.Load() != 2 {
		t.Errorf("upstream hits = %d, want 2", up.hits.Load())
	}
}

func TestHostHeaderIgnored(t *testing.T) {
	// The absolute URL decides; a Host header naming another host neither
	// changes the decision nor reaches upstream.
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})
	hp := fmt.Sprintf("allowed.test:%d", up.port)
	resp, body := raw(t, s, "GET http://"+hp+"/host HTTP/1.1\r\nHost: evil.example\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != hp {
		t.Errorf("upstream saw Host %q (%s), want %q", body, resp.Status, hp)
	}
	resp, body = raw(t, s, fmt.Sprintf("GET http://evil.example:%d/host HTTP/1.1\r\nHost: %s\r\n\r\n", up.port, hp))
	wantRefused(t, resp, body, `host "evil.example" is not in this job's allowlist`)
}

func TestConnectTLS(t *testing.T) {
	up := newUpstream(t, true)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})

	resp, err := client(s, up).Get(fmt.Sprintf("https://allowed.test:%d/hello", up.port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello from upstream" || resp.TLS == nil {
		t.Fatalf("GET over the tunnel = %s %q (TLS %v)", resp.Status, body, resp.TLS != nil)
	}

	// The tunnel is recorded when it closes (the client does not keep it).
	evs := waitEvents(t, s, countEvents(1))
	ev := evs[0]
	if ev.Method != http.MethodConnect || ev.Decision != DecisionAllowed || ev.Host != "allowed.test" || ev.Port != up.port {
		t.Fatalf("event = %+v", ev)
	}
	// A TLS handshake and a request each way: well over a kilobyte in,
	// hundreds of bytes out.
	if ev.BytesOut < 200 || ev.BytesIn < 500 {
		t.Errorf("event bytes out %d in %d, want both well above 0", ev.BytesOut, ev.BytesIn)
	}
}

func TestConnectExactBytes(t *testing.T) {
	const sent, answered = 1000, 2500
	port := tcpServer(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, sent)); err != nil {
			return
		}
		c.Write(bytes.Repeat([]byte("a"), answered))
	})
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})

	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, _, err := roundTrip(c, br, connectReq(fmt.Sprintf("allowed.test:%d", port)))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT = %v, %v", resp, err)
	}
	if _, err := c.Write(bytes.Repeat([]byte("b"), sent)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(br)
	if err != nil || len(got) != answered {
		t.Fatalf("read %d bytes through the tunnel (%v), want %d", len(got), err, answered)
	}

	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionAllowed || ev.BytesOut != sent || ev.BytesIn != answered {
		t.Errorf("event = %+v, want allowed with %d out and %d in", ev, sent, answered)
	}
}

func TestHostNotInPolicyRefused(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port, 443}}, Limits{})

	resp, body := raw(t, s, getReq(fmt.Sprintf("http://evil.example:%d/hello", up.port)))
	wantRefused(t, resp, body, `host "evil.example" is not in this job's allowlist`)
	resp, body = raw(t, s, connectReq("evil.example:443"))
	wantRefused(t, resp, body, `host "evil.example" is not in this job's allowlist`)
	resp, body = raw(t, s, connectReq("Other.Test.:443"))
	wantRefused(t, resp, body, `host "other.test" is not in this job's allowlist`)

	evs := waitEvents(t, s, countEvents(3))
	for i, want := range []struct {
		method, host string
		port         int
	}{{"GET", "evil.example", up.port}, {"CONNECT", "evil.example", 443}, {"CONNECT", "other.test", 443}} {
		ev := evs[i]
		if ev.Decision != DecisionRefused || ev.Method != want.method || ev.Host != want.host || ev.Port != want.port ||
			!strings.Contains(ev.Reason, "not in this job's allowlist") || ev.BytesIn != 0 || ev.BytesOut != 0 {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
	if up.hits.Load() != 0 {
		t.Errorf("upstream was reached %d times", up.hits.Load())
	}
}

func TestIPLiteralsRefused(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test", "*.allowed.test"}, Ports: []int{up.port}}, Limits{})

	forms := []string{"127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"}
	for _, form := range forms {
		hp := fmt.Sprintf("%s:%d", form, up.port)
		resp, body := raw(t, s, connectReq(hp))
		wantRefused(t, resp, body, "is an IP address")
		resp, body = raw(t, s, getReq("http://"+hp+"/hello"))
		wantRefused(t, resp, body, "is an IP address")
	}
	evs := waitEvents(t, s, countEvents(2*len(forms)))
	for _, ev := range evs {
		if ev.Decision != DecisionRefused || !strings.Contains(ev.Reason, "is an IP address") {
			t.Errorf("event = %+v", ev)
		}
	}
	if up.hits.Load() != 0 {
		t.Errorf("upstream was reached %d times", up.hits.Load())
	}

	// A policy cannot name an IP address in the first place.
	_, err := p.Register("job-ip", anyLoopback, netip.MustParseAddr("127.0.0.9"), Policy{Hosts: []string{"127.0.0.1"}}, Limits{})
	if !errors.Is(err, hostpattern.ErrIPLiteral) || !strings.Contains(err.Error(), "Policy.Hosts[0]") {
		t.Errorf("Register with an IP in Hosts = %v, want ErrIPLiteral naming the field", err)
	}
}

func TestPortNotInPolicyRefused(t *testing.T) {
	up := newUpstream(t, false)
	other := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})

	resp, body := raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", other.port)))
	wantRefused(t, resp, body, fmt.Sprintf(`port %d of host "allowed.test" is not in this job's allowed ports`, other.port))
	resp, body = raw(t, s, connectReq(fmt.Sprintf("allowed.test:%d", other.port)))
	wantRefused(t, resp, body, fmt.Sprintf("port %d", other.port))
	// Without a port, plain HTTP means 80, which is not allowed either.
	resp, body = raw(t, s, getReq("http://allowed.test/hello"))
	wantRefused(t, resp, body, `port 80 of host "allowed.test"`)

	// The allowed port works.
	resp, body = raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("allowed port: %s %q", resp.Status, body)
	}
	evs := waitEvents(t, s, countEvents(4))
	for _, ev := range evs[:3] {
		if ev.Decision != DecisionRefused || !strings.Contains(ev.Reason, "allowed ports") {
			t.Errorf("event = %+v", ev)
		}
	}
	if other.hits.Load() != 0 {
		t.Errorf("the other port was reached")
	}
}

func TestGlobPolicy(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"*.allowed.test"}, Ports: []int{up.port}}, Limits{})

	resp, body := raw(t, s, getReq(fmt.Sprintf("http://a.allowed.test:%d/hello", up.port)))
	if resp.StatusCode != http.StatusOK || body != "hello from upstream" {
		t.Errorf("a.allowed.test: %s %q", resp.Status, body)
	}
	resp, body = raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	wantRefused(t, resp, body, `host "allowed.test" is not in this job's allowlist`)

	evs := waitEvents(t, s, countEvents(2))
	if evs[0].Decision != DecisionAllowed || !strings.Contains(evs[0].Reason, `matches "*.allowed.test"`) {
		t.Errorf("event 0 = %+v", evs[0])
	}
	if evs[1].Decision != DecisionRefused {
		t.Errorf("event 1 = %+v", evs[1])
	}
}

func TestPrivateRangeRefused(t *testing.T) {
	up := newUpstream(t, false)
	tlsUp := newUpstream(t, true)
	p := newProxy(t, false) // no AllowRanges: as in production
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port, tlsUp.port}}, Limits{})

	resp, body := raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	wantRefused(t, resp, body, `host "allowed.test" resolves only to addresses this proxy does not reach`, "127.0.0.1")
	resp, body = raw(t, s, connectReq(fmt.Sprintf("allowed.test:%d", tlsUp.port)))
	wantRefused(t, resp, body, "does not reach")

	evs := waitEvents(t, s, countEvents(2))
	for _, ev := range evs {
		if ev.Decision != DecisionRefused || !strings.Contains(ev.Reason, "does not reach") {
			t.Errorf("event = %+v", ev)
		}
	}
	if up.hits.Load() != 0 {
		t.Errorf("upstream was reached")
	}
}

func TestSpecialRangesRefused(t *testing.T) {
	p := newProxy(t, false, func(c *Config) {
		r := newResolver()
		r["metadata.test"] = []net.IP{net.ParseIP("169.254.169.254")}
		r["cgnat.test"] = []net.IP{net.ParseIP("100.100.100.200")}
		r["private.test"] = []net.IP{net.ParseIP("10.200.0.1")}
		r["ula.test"] = []net.IP{net.ParseIP("fd00:ec2::254")}
		r["this-network.test"] = []net.IP{net.ParseIP("0.1.2.3")}
		r["mapped.test"] = []net.IP{net.ParseIP("::ffff:169.254.169.254")}
		r["nat64.test"] = []net.IP{net.ParseIP("64:ff9b::a9fe:a9fe")}
		c.Resolver = r
	})
	names := []string{"metadata.test", "cgnat.test", "private.test", "ula.test", "this-network.test", "mapped.test", "nat64.test"}
	s := register(t, p, Policy{Hosts: names}, Limits{})
	for _, name := range names {
		resp, body := raw(t, s, connectReq(name+":443"))
		wantRefused(t, resp, body, fmt.Sprintf("host %q resolves only to addresses this proxy does not reach", name))
	}
}

func TestOperatorDenyRanges(t *testing.T) {
	p := newProxy(t, false, func(c *Config) {
		r := newResolver()
		r["benchmark.test"] = []net.IP{net.ParseIP("198.18.0.1")}
		c.Resolver = r
		c.DenyRanges = []string{"198.18.0.0/15"}
	})
	s := register(t, p, Policy{Hosts: []string{"benchmark.test"}}, Limits{})
	resp, body := raw(t, s, connectReq("benchmark.test:443"))
	wantRefused(t, resp, body, `host "benchmark.test" resolves only to addresses this proxy does not reach`)
}

// TestPublicAddressesAreNotDenied guards against deny ranges that cover
// too much: a name resolving to an ordinary public address passes the
// address check (the dial then fails, as nothing listens there).
func TestPublicAddressesAreNotDenied(t *testing.T) {
	p := newProxy(t, false, func(c *Config) {
		r := newResolver()
		r["public.test"] = []net.IP{net.ParseIP("203.0.113.80")}
		r["public6.test"] = []net.IP{net.ParseIP("2001:db8::80")}
		c.Resolver = r
	})
	s := register(t, p, Policy{Hosts: []string{"public.test", "public6.test"}}, Limits{ConnectTimeout: 200 * time.Millisecond})
	for _, name := range []string{"public.test", "public6.test"} {
		resp, body := raw(t, s, connectReq(name+":443"))
		if strings.Contains(body, "does not reach") || resp.StatusCode == http.StatusForbidden {
			t.Errorf("%s was refused by an address range: %s %q", name, resp.Status, body)
		}
	}
}

func TestUnresolvableNameFails(t *testing.T) {
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"missing.test"}}, Limits{})
	resp, body := raw(t, s, connectReq("missing.test:443"))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `sandq egress: could not reach "missing.test"`) {
		t.Errorf("CONNECT to an unresolvable name = %s %q", resp.Status, body)
	}
	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionFailed || ev.Host != "missing.test" {
		t.Errorf("event = %+v", ev)
	}
}

func TestOtherRefusals(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})
	hp := fmt.Sprintf("allowed.test:%d", up.port)

	// Asking to chain through another proxy.
	resp, body := raw(t, s, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\nX-Upstream-Https-Proxy: http://other.test:%d\r\n\r\n", hp, hp, up.port))
	wantRefused(t, resp, body, "chaining to another proxy")
	// https:// in absolute form: TLS goes through CONNECT only.
	resp, body = raw(t, s, getReq("https://"+hp+"/hello"))
	wantRefused(t, resp, body, `scheme "https" is not proxied`)
	// Not a proxy request.
	resp, body = raw(t, s, "GET /hello HTTP/1.1\r\nHost: "+hp+"\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(body, "sandq egress: only proxy requests") {
		t.Errorf("origin-form request = %s %q", resp.Status, body)
	}
	evs := waitEvents(t, s, countEvents(3))
	for _, ev := range evs {
		if ev.Decision != DecisionRefused {
			t.Errorf("event = %+v", ev)
		}
	}
	if up.hits.Load() != 0 {
		t.Errorf("upstream was reached")
	}
}

func TestEnvironmentProxyNotChained(t *testing.T) {
	// goproxy tunnels through HTTPS_PROXY when the environment names one;
	// the guard refuses to dial anything but the checked destination.
	var trapped atomic.Int64
	trap := tcpServer(t, func(net.Conn) { trapped.Add(1) })
	t.Setenv("HTTPS_PROXY", fmt.Sprintf("http://127.0.0.1:%d", trap))
	t.Setenv("NO_PROXY", "")
	up := newUpstream(t, true)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})

	resp, body := raw(t, s, connectReq(fmt.Sprintf("allowed.test:%d", up.port)))
	if resp.StatusCode == http.StatusOK || !strings.Contains(body, "does not chain") {
		t.Errorf("CONNECT with HTTPS_PROXY set = %s %q, want a failure", resp.Status, body)
	}
	if trapped.Load() != 0 {
		t.Errorf("the environment's proxy was dialled")
	}
	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionFailed {
		t.Errorf("event = %+v", ev)
	}
}

func TestForeignSourceDropped(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{})

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _, err = roundTrip(c, bufio.NewReader(c), getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	if err == nil {
		t.Fatal("a connection from 127.0.0.2 got a response")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection from 127.0.0.2 was left open: %v", err)
	}
	if up.hits.Load() != 0 {
		t.Errorf("upstream was reached")
	}
	// The job's own address still works.
	resp, body := raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("from the job's address: %s %q", resp.Status, body)
	}
	if evs := s.Events(); len(evs) != 1 {
		t.Errorf("audit = \n%s want only the job's own request", dump(evs))
	}
}

// keptConn is a keep-alive connection to the proxy that has served one request.
func keptConn(t *testing.T, s *Session, req string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	resp, _, err := roundTrip(c, bufio.NewReader(c), req)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func TestMaxConns(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{MaxConns: 2})
	req := getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port))

	c1, err := keptConn(t, s, req)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := keptConn(t, s, req)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c3, err := keptConn(t, s, req); err == nil {
		c3.Close()
		t.Fatal("a third concurrent connection was served with MaxConns 2")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the third connection was left open: %v", err)
	}
	waitEvents(t, s, func(evs []Event) bool {
		for _, ev := range evs {
			if ev.Decision == DecisionRefused && strings.Contains(ev.Reason, "2 connections open") {
				return true
			}
		}
		return false
	})

	// Closing one frees its slot.
	c1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := keptConn(t, s, req)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after closing a connection: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMaxBytes(t *testing.T) {
	up := newUpstream(t, false)
	p := newProxy(t, true)
	const limit = 64 << 10
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port}}, Limits{MaxBytes: limit})
	c := client(s, nil)

	resp, err := c.Get(fmt.Sprintf("http://allowed.test:%d/big", up.port))
	if err == nil {
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n >= 1<<20 {
			t.Fatalf("read all %d bytes past a limit of %d", n, limit)
		}
		if n > 2*limit {
			t.Errorf("read %d bytes, well past the limit of %d", n, limit)
		}
	}
	// Later connections are refused.
	if _, err := c.Get(fmt.Sprintf("http://allowed.test:%d/hello", up.port)); err == nil {
		t.Error("a request after the byte limit was served")
	}
	waitEvents(t, s, func(evs []Event) bool {
		tripped, refused := false, false
		for _, ev := range evs {
			tripped = tripped || strings.Contains(ev.Reason, "passed its limit of 65536 bytes: its connections are closed")
			refused = refused || strings.Contains(ev.Reason, "connection refused: the job passed its limit")
		}
		return tripped && refused
	})
}

// tunnel opens a CONNECT tunnel through the session.
func tunnel(t *testing.T, s *Session, hostport string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, _, err := roundTrip(c, br, connectReq(hostport))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s = %v, %v", hostport, resp, err)
	}
	return c, br
}

// pingUntilClosed sends a byte through an echo tunnel every interval and
// returns how long the tunnel lived.
func pingUntilClosed(t *testing.T, c net.Conn, br *bufio.Reader, interval, max time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < max {
		if _, err := c.Write([]byte{'p'}); err != nil {
			return time.Since(start)
		}
		if _, err := br.ReadByte(); err != nil {
			return time.Since(start)
		}
		time.Sleep(interval)
	}
	t.Fatalf("the tunnel was still open after %s", max)
	return 0
}

func TestIdleTimeout(t *testing.T) {
	port := echoServer(t)
	p := newProxy(t, true)
	const idle = 300 * time.Millisecond
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{IdleTimeout: idle})
	c, br := tunnel(t, s, fmt.Sprintf("allowed.test:%d", port))

	// Traffic keeps the tunnel open past the idle timeout...
	start := time.Now()
	for time.Since(start) < 3*idle {
		if _, err := c.Write([]byte{'p'}); err != nil {
			t.Fatalf("an active tunnel was closed after %s: %v", time.Since(start), err)
		}
		if _, err := br.ReadByte(); err != nil {
			t.Fatalf("an active tunnel was closed after %s: %v", time.Since(start), err)
		}
		time.Sleep(idle / 6)
	}
	// ...and silence closes it.
	quiet := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("read a byte from a silent echo tunnel")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the idle tunnel was not closed")
	}
	if waited := time.Since(quiet); waited < idle/2 {
		t.Errorf("the tunnel closed %s after going quiet, before the idle timeout of %s", waited, idle)
	}
	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionAllowed || !strings.Contains(ev.Reason, "closed by the proxy: idle timeout") || ev.BytesOut == 0 || ev.BytesOut != ev.BytesIn {
		t.Errorf("event = %+v", ev)
	}
}

func TestTotalTimeout(t *testing.T) {
	port := echoServer(t)
	p := newProxy(t, true)
	const total = 500 * time.Millisecond
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{TotalTimeout: total})
	c, br := tunnel(t, s, fmt.Sprintf("allowed.test:%d", port))

	lived := pingUntilClosed(t, c, br, 50*time.Millisecond, 8*time.Second)
	if lived < total/2 {
		t.Errorf("the tunnel lived %s, less than the total timeout of %s", lived, total)
	}
	ev := waitEvents(t, s, countEvents(1))[0]
	if !strings.Contains(ev.Reason, "closed by the proxy: total timeout") {
		t.Errorf("event = %+v", ev)
	}
}

func TestSessionClose(t *testing.T) {
	up := newUpstream(t, false)
	port := echoServer(t)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{up.port, port}}, Limits{})

	resp, _ := raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/hello", up.port)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET = %s", resp.Status)
	}
	waitEvents(t, s, countEvents(1))
	c, br := tunnel(t, s, fmt.Sprintf("allowed.test:%d", port))
	c.Write([]byte("abc"))
	if _, err := io.ReadFull(br, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}

	evs := s.Close().Events
	if len(evs) != 2 || evs[0].Method != "GET" || evs[1].Method != "CONNECT" ||
		evs[1].BytesOut != 3 || evs[1].BytesIn != 3 || !strings.Contains(evs[1].Reason, "session closed") {
		t.Fatalf("final audit:\n%s", dump(evs))
	}
	// The open tunnel was closed...
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel is still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("the tunnel is still open")
	}
	// ...and the listener is gone.
	if c, err := net.DialTimeout("tcp", s.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("dialled the session's address after Close")
	}
	// Close is idempotent and the audit stays.
	if again := s.Close().Events; len(again) != 2 {
		t.Errorf("second Close = %d events", len(again))
	}
	if later := s.Events(); len(later) != 2 {
		t.Errorf("Events after Close = %d events", len(later))
	}
	// The job ID and address can be registered again.
	s2, err := p.Register(s.ID(), anyLoopback, clientAddr, Policy{Hosts: []string{"allowed.test"}}, Limits{})
	if err != nil {
		t.Fatalf("registering again after Close: %v", err)
	}
	s2.Close()
}

func TestCloseWithRequestInFlight(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(up.Close)
	t.Cleanup(func() { close(release) })
	port := up.Listener.Addr().(*net.TCPAddr).Port
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})

	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, getReq(fmt.Sprintf("http://allowed.test:%d/slow", port)))
	<-entered

	start := time.Now()
	evs := s.Close().Events
	if waited := time.Since(start); waited >= drainTimeout {
		t.Errorf("Close waited %s for the request in flight", waited)
	}
	if len(evs) != 1 || evs[0].Method != "GET" || evs[0].Host != "allowed.test" || evs[0].Decision != DecisionFailed ||
		!strings.Contains(evs[0].Reason, "closed by the proxy: session closed") {
		t.Errorf("final audit:\n%s", dump(evs))
	}
}

func TestEventsCapped(t *testing.T) {
	p := newProxy(t, true, func(c *Config) { c.MaxEvents = 5 })
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}}, Limits{})

	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i := range 8 {
		resp, _, err := roundTrip(c, br, getReq(fmt.Sprintf("http://evil%d.example/", i)))
		if err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
	}
	var a Audit
	deadline := time.Now().Add(5 * time.Second)
	for a = s.Audit(); a.Refused < 8 && time.Now().Before(deadline); a = s.Audit() {
		time.Sleep(10 * time.Millisecond)
	}
	if len(a.Events) != 5 || a.Events[4].Host != "evil4.example" || a.Refused != 8 || a.Unlisted != 3 {
		t.Errorf("audit: refused %d, unlisted %d, events:\n%s", a.Refused, a.Unlisted, dump(a.Events))
	}
	if len(a.Refusals) != 8 || a.Refusals[7].Host != "evil7.example" || a.Refusals[7].Count != 1 || !strings.Contains(a.Refusals[7].Reason, "allowlist") {
		t.Errorf("refusals: %+v", a.Refusals)
	}
}

func TestRegisterErrors(t *testing.T) {
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}}, Limits{})
	other := netip.MustParseAddr("127.0.0.3")

	tests := []struct {
		name   string
		jobID  string
		listen netip.AddrPort
		src    netip.Addr
		pol    Policy
		lim    Limits
		want   string
	}{
		{"duplicate job", s.ID(), anyLoopback, other, Policy{}, Limits{}, "already registered"},
		{"duplicate source", "job-x", anyLoopback, clientAddr, Policy{}, Limits{}, "source 127.0.0.1 is already registered"},
		{"empty job", "", anyLoopback, other, Policy{}, Limits{}, "job ID is empty"},
		{"no listen", "job-x", netip.AddrPort{}, other, Policy{}, Limits{}, "listen address"},
		{"no source", "job-x", anyLoopback, netip.Addr{}, Policy{}, Limits{}, "source address"},
		{"bad glob", "job-x", anyLoopback, other, Policy{Hosts: []string{"*.org"}}, Limits{}, "Policy.Hosts[0]"},
		{"negative limit", "job-x", anyLoopback, other, Policy{}, Limits{MaxBytes: -1}, "Limits.MaxBytes"},
		{"busy address", "job-x", s.Addr(), other, Policy{}, Limits{}, "listening on"},
	}
	for _, tt := range tests {
		_, err := p.Register(tt.jobID, tt.listen, tt.src, tt.pol, tt.lim)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Register = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}

	if _, err := New(Config{AllowRanges: []string{"127.0.0.1"}}); err == nil || !strings.Contains(err.Error(), "Config.AllowRanges[0]") {
		t.Errorf("New with a bad range = %v", err)
	}

	p2, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	p2.Close()
	if _, err := p2.Register("job-y", anyLoopback, other, Policy{}, Limits{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Register after Close = %v, want ErrClosed", err)
	}
}

func TestProxyCloseClosesSessions(t *testing.T) {
	port := echoServer(t)
	p, err := New(Config{Logger: testLogger(t), Resolver: newResolver(), AllowRanges: []string{"127.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Register("job-close", anyLoopback, clientAddr, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	c, br := tunnel(t, s, fmt.Sprintf("allowed.test:%d", port))
	c.Write([]byte("x"))
	br.ReadByte()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel survived Proxy.Close")
	}
	if evs := s.Events(); len(evs) != 1 || evs[0].Method != "CONNECT" {
		t.Errorf("audit after Proxy.Close:\n%s", dump(evs))
	}
}

// TestSmokescreenLogsRouted checks that smokescreen's logrus output reaches
// the slog logger at debug level.
func TestSmokescreenLogsRouted(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := newProxy(t, true, func(c *Config) { c.Logger = logger })
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}}, Limits{})
	resp, _ := raw(t, s, connectReq("evil.example:443"))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %s", resp.Status)
	}
	waitEvents(t, s, countEvents(1))
	out := buf.String()
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "smokescreen: CANONICAL-PROXY-DECISION") {
		t.Errorf("smokescreen's decision log did not reach slog at debug:\n%s", out)
	}
}

type syncBuffer = testenv.SyncBuffer
