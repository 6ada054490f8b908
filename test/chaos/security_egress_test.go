package chaos

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
)

// securityEgressHostiles are networked jobs that attack the firewall
// (security review, issue 13: the proxy-only network). They ask for
// netGroup ("*.example.com") only to get a network; nothing leaves the
// host: direct sockets are refused by the host's firewall whatever their
// address. The audit flood (1000 refusals hiding an allowed request) is
// e2e's TestEgressAuditKeepsAllowedPastRefusals, whose worker resolves
// names with a resolver of its own, so no lookup leaves the machine.
func securityEgressHostiles() []hostile {
	return []hostile{
		{
			// A tool without proxy support and raw sockets: they must fail
			// at once ("connection refused"), not wait for their timeout,
			// and the result counts them. Every address is either the
			// job's gateway (the host) or one of the job pool that no
			// sandbox has: the firewall redirects them all to the host.
			name: "direct sockets around the proxy (bypass refused at once, counted)",
			sub: jobs.Submission{Script: script("bypass.py", `import http.client, os, socket, time
gw = os.environ["HTTP_PROXY"][len("http://"):].rsplit(":", 1)[0]
unused = "10.200.255.254"
def attempt(name, f):
    t = time.monotonic()
    try:
        f()
        out = "CONNECTED"
    except Exception as e:
        out = type(e).__name__
    print(name, out, "%.3f" % (time.monotonic() - t), flush=True)
def tcp(host, port):
    def f():
        socket.create_connection((host, port), timeout=20).close()
    return f
def udp(host, port):
    def f():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(20)
        s.connect((host, port))
        s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01")
        s.recv(512)
    return f
def http_no_proxy(host, port):
    def f():
        c = http.client.HTTPConnection(host, port, timeout=20)
        c.request("GET", "/")
        c.getresponse()
    return f
attempt("gateway-ssh", tcp(gw, 22))
attempt("gateway-redis", tcp(gw, 6379))
attempt("gateway-dns", udp(gw, 53))
attempt("unused-https", tcp(unused, 443))
attempt("unused-proxy-port", tcp(unused, 3128))
attempt("unused-dns", udp(unused, 53))
attempt("http-client-without-proxy", http_no_proxy(unused, 80))
`), Network: []string{netGroup}, Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				lines := strings.Split(strings.TrimSpace(tail(r.Stdout)), "\n")
				slowest := 0.0
				for _, line := range lines {
					f := strings.Fields(line)
					if len(f) != 3 || f[1] != "ConnectionRefusedError" {
						t.Errorf("%q: want ConnectionRefusedError", line)
						continue
					}
					secs, _ := strconv.ParseFloat(f[2], 64)
					slowest = max(slowest, secs)
					if secs > 10 { // the sockets time out after 20s
						t.Errorf("%q: refused after %.1fs, want at once", line, secs)
					}
				}
				if len(lines) != 7 {
					t.Errorf("%d attempts ran, want 7:\n%s\nstderr %s", len(lines), tail(r.Stdout), tail(r.Stderr))
				}
				e := r.Egress
				if e == nil || e.Bypass == nil || e.Bypass.Attempts != 7 || e.Allowed+e.Refused+e.Failed != 0 {
					t.Errorf("egress %+v, want 7 bypass attempts and no proxy requests", e)
					return "bypass not counted"
				}
				return fmt.Sprintf("7 of 7 refused at once (slowest %.3fs), %d bypass attempts (%d bytes) in the result", slowest, e.Bypass.Attempts, e.Bypass.Bytes)
			},
			disk: 64 << 20,
		},
	}
}
