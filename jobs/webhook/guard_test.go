package webhook

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startDNS runs a small DNS server on loopback UDP that answers A and AAAA
// queries from records (NXDOMAIN for other names), and returns a resolver
// that asks only it.
func startDNS(t *testing.T, records map[string]netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := dnsAnswer(buf[:n], records); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}}
}

// dnsAnswer answers the single question of the DNS query q (RFC 1035).
func dnsAnswer(q []byte, records map[string]netip.Addr) []byte {
	if len(q) < 12 {
		return nil
	}
	i := 12
	var labels []string
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l&0xC0 != 0 || i+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i:])
	i += 4
	addr, known := records[strings.ToLower(strings.Join(labels, "."))]
	var rdata []byte
	switch {
	case known && qtype == 1 && addr.Is4():
		a := addr.As4()
		rdata = a[:]
	case known && qtype == 28 && addr.Is6():
		a := addr.As16()
		rdata = a[:]
	}
	flags := uint16(0x8180) // response, recursion desired and available
	if !known {
		flags |= 3 // NXDOMAIN
	}
	resp := append([]byte{}, q[:2]...) // id
	resp = binary.BigEndian.AppendUint16(resp, flags)
	resp = binary.BigEndian.AppendUint16(resp, 1) // questions
	if rdata != nil {
		resp = binary.BigEndian.AppendUint16(resp, 1) // answers
	} else {
		resp = binary.BigEndian.AppendUint16(resp, 0)
	}
	resp = append(resp, 0, 0, 0, 0) // no authority, no additional records
	resp = append(resp, q[12:i]...)
	if rdata != nil {
		resp = append(resp, 0xC0, 12) // the name: a pointer to the question's
		resp = binary.BigEndian.AppendUint16(resp, qtype)
		resp = binary.BigEndian.AppendUint16(resp, 1) // class IN
		resp = binary.BigEndian.AppendUint32(resp, 60)
		resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdata)))
		resp = append(resp, rdata...)
	}
	return resp
}

// unresolvable is a resolver that cannot reach any DNS server.
var unresolvable = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no DNS server in this test")
}}

func TestCheckURLRefuses(t *testing.T) {
	ctx := context.Background()
	cases := []struct{ url, says string }{
		{"http://127.0.0.1/x", "127.0.0.1 is a loopback address"},
		{"http://127.9.9.9:8080/x", "loopback"},
		{"http://[::1]/", "::1 is a loopback address"},
		{"http://169.254.169.254/latest", "cloud metadata address"},
		{"http://169.254.1.1/", "link-local"},
		{"http://[fe80::1]/", "link-local"},
		{"http://10.1.2.3/", "private address (RFC 1918)"},
		{"http://172.16.0.1/", "RFC 1918"},
		{"http://192.168.1.1/", "RFC 1918"},
		{"http://[fd00::1]/", "unique local"},
		{"http://100.64.0.1/", "CGNAT"},
		{"http://0.0.0.0/", "unspecified"},
		{"http://[::]/", "unspecified"},
		{"http://224.0.0.1/", "multicast"},
		{"http://[ff02::1]/", "multicast"},
		{"http://255.255.255.255/", "broadcast"},
		{"http://[::ffff:127.0.0.1]/", "loopback address (IPv4-mapped)"},
		{"http://[::ffff:169.254.169.254]/", "metadata"},
		{"http://[64:ff9b::a01:203]/", "RFC 1918) (NAT64)"},
		{"http://localhost/", "localhost names are loopback"},
		{"http://LOCALHOST.:8080/", "localhost names are loopback"},
		{"http://api.localhost/", "localhost names are loopback"},
		{"ftp://x", `scheme "ftp"`},
		{"file:///etc/passwd", `scheme "file"`},
		{"http://user:pw@example.com/", "must not contain credentials"},
		{"not a url", "no scheme"},
		{"/relative/path", "no scheme"},
		{"http:///nohost", "no host"},
		{"http://[::1", "not a valid URL"},
	}
	for _, c := range cases {
		err := Guard{}.CheckURL(ctx, nil, c.url)
		if err == nil {
			t.Errorf("CheckURL(%q) accepted it", c.url)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("CheckURL(%q) = %q, want it to say %q", c.url, err, c.says)
		}
	}
	// Credentials are never repeated in the error.
	if err := (Guard{}).CheckURL(ctx, nil, "https://user:hunter2@example.com/"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("credentials: %v", err)
	}
	// Refusals of addresses are ErrBlockedAddress; format errors are not.
	if err := (Guard{}).CheckURL(ctx, nil, "http://10.1.2.3/"); !errors.Is(err, ErrBlockedAddress) {
		t.Errorf("10.1.2.3: %v is not ErrBlockedAddress", err)
	}
	if err := (Guard{}).CheckURL(ctx, nil, "ftp://x"); errors.Is(err, ErrBlockedAddress) {
		t.Errorf("ftp: %v is ErrBlockedAddress", err)
	}
}

func TestCheckURLResolves(t *testing.T) {
	ctx := context.Background()
	r := startDNS(t, map[string]netip.Addr{
		"private.hooks.test":  netip.MustParseAddr("10.0.0.5"),
		"metadata.hooks.test": netip.MustParseAddr("169.254.169.254"),
		"mapped.hooks.test":   netip.MustParseAddr("::ffff:127.0.0.1"),
		"public.hooks.test":   netip.MustParseAddr("93.184.215.14"),
	})
	for host, detail := range map[string]string{
		"private.hooks.test":  "private.hooks.test resolves to 10.0.0.5, a private address (RFC 1918)",
		"metadata.hooks.test": "resolves to 169.254.169.254, the cloud metadata address",
		"mapped.hooks.test":   "loopback",
	} {
		// The message names the host, not what it resolved to; the detail,
		// for the worker's log, has that.
		err := Guard{}.CheckURL(ctx, r, "https://"+host+"/hook")
		says := host + " resolves to an address webhooks may not reach"
		var blocked *BlockedAddressError
		if err == nil || !errors.Is(err, ErrBlockedAddress) || !strings.Contains(err.Error(), says) || !errors.As(err, &blocked) || !strings.Contains(blocked.Detail(), detail) {
			t.Errorf("%s: err = %v, want ErrBlockedAddress saying %q with the detail %q", host, err, says, detail)
		}
		// Without a resolver the name is not looked up, and is accepted.
		if err := (Guard{}).CheckURL(ctx, nil, "https://"+host+"/hook"); err != nil {
			t.Errorf("%s with no resolver: %v", host, err)
		}
		if err := (Guard{AllowPrivate: true}).CheckURL(ctx, r, "https://"+host+"/hook"); err != nil {
			t.Errorf("%s with AllowPrivate: %v", host, err)
		}
	}
	if err := (Guard{}).CheckURL(ctx, r, "https://public.hooks.test/hook"); err != nil {
		t.Errorf("public name: %v", err)
	}
	// A name that does not resolve now is accepted: NXDOMAIN, or no DNS at all.
	if err := (Guard{}).CheckURL(ctx, r, "https://example.com/hook"); err != nil {
		t.Errorf("NXDOMAIN: %v", err)
	}
	if err := (Guard{}).CheckURL(ctx, unresolvable, "https://example.com/hook"); err != nil {
		t.Errorf("unreachable DNS: %v", err)
	}
	if err := (Guard{}).CheckURL(ctx, nil, "https://example.com/hook"); err != nil {
		t.Errorf("nil resolver: %v", err)
	}
	// localhost through the system resolver (the hosts file) is refused too.
	if err := (Guard{}).CheckURL(ctx, net.DefaultResolver, "http://localhost:8080/"); err == nil {
		t.Error("localhost with the default resolver was accepted")
	}
	// A canceled context is an error, not "does not resolve".
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := (Guard{}).CheckURL(canceled, r, "https://public.hooks.test/"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: %v", err)
	}
}

func TestCheckURLAllowPrivate(t *testing.T) {
	g := Guard{AllowPrivate: true}
	for _, u := range []string{"http://127.0.0.1/x", "http://[::1]:8080/", "http://localhost/", "http://10.1.2.3/", "https://example.com/hook"} {
		if err := g.CheckURL(context.Background(), nil, u); err != nil {
			t.Errorf("AllowPrivate CheckURL(%q): %v", u, err)
		}
	}
	// Format rules still hold.
	for _, u := range []string{"ftp://x", "http://u:p@127.0.0.1/", "not a url"} {
		if err := g.CheckURL(context.Background(), nil, u); err == nil {
			t.Errorf("AllowPrivate CheckURL(%q) accepted it", u)
		}
	}
}

// countingServer is a loopback HTTP server counting the connections it accepts.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func TestDialContextRefusesAtConnect(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	addr := srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	ctx := context.Background()

	_, err := Guard{}.DialContext(time.Second)(ctx, "tcp", addr)
	if err == nil {
		t.Fatal("DialContext connected to loopback")
	}
	t.Logf("dial %s: %v", addr, err)
	var blocked *BlockedAddressError
	if !errors.Is(err, ErrBlockedAddress) || !strings.Contains(err.Error(), "refusing to connect") || !errors.As(err, &blocked) || blocked.Detail() != "127.0.0.1 is a loopback address" {
		t.Errorf("error %q: want an ErrBlockedAddress refusing 127.0.0.1 as loopback in its detail", err)
	}

	// The URL uses a name, which CheckURL without a resolver cannot judge;
	// the dialer refuses the address the name resolved to.
	client := &http.Client{Transport: &http.Transport{DialContext: Guard{}.DialContext(time.Second)}}
	resp, err := client.Get("http://localhost:" + port + "/")
	if err == nil {
		resp.Body.Close()
		t.Fatal("GET http://localhost reached the server")
	}
	t.Logf("GET http://localhost:%s/: %v", port, err)
	if !errors.Is(err, ErrBlockedAddress) || !errors.As(err, &blocked) || !strings.Contains(blocked.Detail(), "loopback address") {
		t.Errorf("error %q: want an ErrBlockedAddress naming loopback in its detail", err)
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("server accepted %d connections, want 0", n)
	}

	// With AllowPrivate the same dial works.
	c, err := Guard{AllowPrivate: true}.DialContext(time.Second)(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("AllowPrivate dial: %v", err)
	}
	c.Close()
}
