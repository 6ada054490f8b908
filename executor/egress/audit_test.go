package egress

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// notFound is a loopback HTTP server that answers every request 404 with
// an empty body, without reading a request body.
func notFound(t *testing.T) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

// TestAllowedRequestRecordedAfterManyRefusals: a job that first makes as
// many refused CONNECTs as the audit keeps events, then one allowed request
// carrying data in its URL, must find the allowed request in its audit.
func TestAllowedRequestRecordedAfterManyRefusals(t *testing.T) {
	port := notFound(t)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})
	for i := range DefaultMaxEvents {
		resp, body := raw(t, s, connectReq(fmt.Sprintf("evil%d.example:443", i)))
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("CONNECT %d: %s %q", i, resp.Status, body)
		}
	}
	secret := strings.Repeat("5ec2e7", 300)
	resp, _ := raw(t, s, getReq(fmt.Sprintf("http://allowed.test:%d/x?d=%s", port, secret)))
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("allowed GET: %s", resp.Status)
	}
	evs := waitEvents(t, s, func(evs []Event) bool {
		for _, ev := range evs {
			if ev.Decision == DecisionAllowed {
				return true
			}
		}
		return false
	})
	a := s.Close()
	if a.Allowed != 1 || a.Refused != DefaultMaxEvents || a.Failed != 0 || a.Unlisted != 1 || len(a.Events) != DefaultMaxEvents {
		t.Errorf("audit: allowed %d refused %d failed %d unlisted %d, %d events", a.Allowed, a.Refused, a.Failed, a.Unlisted, len(a.Events))
	}
	last := evs[len(evs)-1]
	if last.Decision != DecisionAllowed || last.Host != "allowed.test" || last.BytesOut < int64(len(secret)) {
		t.Errorf("the last event listed is %+v, want the allowed GET with its %d bytes of URL", last, len(secret))
	}
	if len(a.Destinations) != 1 {
		t.Fatalf("destinations: %+v", a.Destinations)
	}
	if d := a.Destinations[0]; d.Host != "allowed.test" || d.Port != port || d.Allowed != 1 || d.BytesOut != last.BytesOut || d.BytesIn != last.BytesIn ||
		a.BytesOut != d.BytesOut || a.BytesIn != d.BytesIn {
		t.Errorf("destination %+v, totals out %d in %d; want the allowed GET's %d and %d", d, a.BytesOut, a.BytesIn, last.BytesOut, last.BytesIn)
	}
	// The refusals are summed up, bounded.
	var refused int64
	for _, r := range a.Refusals {
		refused += r.Count
	}
	if o := a.OtherRefusals; len(a.Refusals) != DefaultMaxDestinations || o == nil || refused+o.Count != DefaultMaxEvents ||
		o.Destinations != DefaultMaxEvents-DefaultMaxDestinations {
		t.Errorf("%d refusals listed (%d requests), other %+v", len(a.Refusals), refused, o)
	}
}

// TestAuditTotalsPastTheCaps: with the event list and the destination
// table full, every allowed and failed request is still counted, with its
// bytes, per destination or in the "other" entry; refusals give way in the
// list.
func TestAuditTotalsPastTheCaps(t *testing.T) {
	up := newUpstream(t, false)
	dead := tcpServer(t, func(net.Conn) {}) // closes at once: the request fails
	p := newProxy(t, true, func(c *Config) {
		c.MaxEvents, c.MaxDestinations = 4, 2
		r := newResolver()
		for i := range 5 {
			r[fmt.Sprintf("d%d.allowed.test", i)] = loopback
		}
		c.Resolver = r
	})
	s := register(t, p, Policy{Hosts: []string{"*.allowed.test"}, Ports: []int{up.port, dead}}, Limits{})
	get := func(host string, port int) {
		t.Helper()
		raw(t, s, getReq(fmt.Sprintf("http://%s:%d/hello", host, port)))
	}
	for i := range 4 {
		resp, _ := raw(t, s, connectReq(fmt.Sprintf("evil%d.example:443", i)))
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("CONNECT: %s", resp.Status)
		}
	}
	for i := range 5 {
		get(fmt.Sprintf("d%d.allowed.test", i), up.port)
		get(fmt.Sprintf("d%d.allowed.test", i), up.port)
	}
	get("d0.allowed.test", dead)
	get("d4.allowed.test", dead)
	a := s.Close()

	if a.Allowed != 10 || a.Failed != 2 || a.Refused != 4 || a.Unlisted != 12 || len(a.Events) != 4 {
		t.Errorf("audit: allowed %d failed %d refused %d unlisted %d\n%s", a.Allowed, a.Failed, a.Refused, a.Unlisted, dump(a.Events))
	}
	for _, ev := range a.Events {
		if ev.Decision != DecisionAllowed {
			t.Errorf("a refusal is still listed while allowed requests are not: %+v", ev)
		}
	}
	var out, in int64
	if len(a.Destinations) != 2 {
		t.Fatalf("destinations %+v", a.Destinations)
	}
	for i, d := range a.Destinations {
		if d.Host != fmt.Sprintf("d%d.allowed.test", i) || d.Port != up.port || d.Allowed != 2 || d.BytesIn < 2*int64(len("hello from upstream")) {
			t.Errorf("destination %d: %+v", i, d)
		}
		out, in = out+d.BytesOut, in+d.BytesIn
	}
	o := a.OtherDestinations
	// d2-d4 on the upstream's port, and both failures: d0 and d4 on the
	// dead port.
	if o == nil || o.Destinations != 5 || o.Allowed != 6 || o.Failed != 2 || o.BytesIn < 6*int64(len("hello from upstream")) {
		t.Fatalf("other destinations: %+v", o)
	}
	if out+o.BytesOut != a.BytesOut || in+o.BytesIn != a.BytesIn || a.BytesOut == 0 {
		t.Errorf("per-destination bytes %d+%d out, %d+%d in; totals %d and %d", out, o.BytesOut, in, o.BytesIn, a.BytesOut, a.BytesIn)
	}
	if len(a.Refusals) != 2 || a.OtherRefusals == nil || a.OtherRefusals.Count != 2 || a.OtherRefusals.Destinations != 2 {
		t.Errorf("refusals %+v, other %+v", a.Refusals, a.OtherRefusals)
	}
}

// TestPlainHTTPBytesCounted: a plain HTTP request is counted as exchanged
// with upstream: request line, headers and body out; status line, headers
// and body in. A GET carrying data in its URL, answered 404 with no body,
// is not "0 bytes both ways".
func TestPlainHTTPBytesCounted(t *testing.T) {
	port := notFound(t)
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})
	secret := strings.Repeat("5ec2e7", 300)
	u := fmt.Sprintf("http://allowed.test:%d/x?d=%s", port, secret)
	resp, _ := raw(t, s, getReq(u))
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET: %s", resp.Status)
	}
	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionAllowed || ev.BytesOut < int64(len(u)) || ev.BytesIn < int64(len("HTTP/1.1 404 Not Found\r\n\r\n")) {
		t.Errorf("GET with %d bytes of URL answered by an empty 404: event %+v, want at least %d bytes out and a status line in", len(u), ev, len(u))
	}
}

// TestPlainHTTPExactBytes: the event of a plain HTTP request counts exactly
// what upstream received and sent.
func TestPlainHTTPExactBytes(t *testing.T) {
	const response = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
	received := make(chan int, 1)
	port := tcpServer(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		cr := &countingReader{r: c}
		br := bufio.NewReader(cr)
		req, err := http.ReadRequest(br)
		if err != nil {
			received <- -1
			return
		}
		io.Copy(io.Discard, req.Body)
		// What the request took on the wire: everything read so far.
		n := cr.n - br.Buffered()
		io.WriteString(c, response)
		received <- n
	})
	p := newProxy(t, true)
	s := register(t, p, Policy{Hosts: []string{"allowed.test"}, Ports: []int{port}}, Limits{})
	body := strings.Repeat("b", 3000)
	resp, got := raw(t, s, fmt.Sprintf("POST http://allowed.test:%d/up?q=%s HTTP/1.1\r\nHost: allowed.test:%d\r\nContent-Length: %d\r\n\r\n%s",
		port, strings.Repeat("q", 500), port, len(body), body))
	if resp.StatusCode != http.StatusOK || got != "hello" {
		t.Fatalf("POST = %s %q", resp.Status, got)
	}
	n := <-received
	ev := waitEvents(t, s, countEvents(1))[0]
	if ev.Decision != DecisionAllowed || ev.BytesOut != int64(n) || ev.BytesIn != int64(len(response)) {
		t.Errorf("event = %+v, want %d bytes out (as upstream read them) and %d in", ev, n, len(response))
	}
	if n < len(body)+500 {
		t.Errorf("upstream read only %d bytes", n)
	}
}
