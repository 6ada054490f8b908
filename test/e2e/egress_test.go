package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/jobnet"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

func npmHost(t *testing.T) string {
	t.Helper()
	hosts := env.cfg.Egress.Groups["npm"]
	if len(hosts) != 1 {
		t.Fatalf("the npm group is %v", hosts)
	}
	return hosts[0]
}

func event(r *jobs.Result, host, decision string) bool {
	if r.Egress == nil {
		return false
	}
	for _, e := range r.Egress.Requests {
		if e.Host == host && e.Decision == decision {
			return true
		}
	}
	return false
}

func TestNpmThroughTheProxy(t *testing.T) {
	script := file(t, "npm.sh", `set -e
cd /work
echo "proxy $HTTPS_PROXY"
npm view is-number version
npm install --no-audit --no-fund is-number
node -e 'console.log("is-number says", require("is-number")(5))'
`)
	r := runJob(t, jobs.Submission{Script: script, Network: []string{"npm"}, Limits: jobs.LimitRequest{TimeoutSeconds: 240}})
	wantStatus(t, r, jobs.StatusSucceeded)
	if !strings.Contains(r.Stdout.Tail, "is-number says true") {
		t.Errorf("stdout: %s", r.Stdout.Tail)
	}
	host := npmHost(t)
	if !event(r, host, "allowed") {
		t.Errorf("the registry host %s is not listed as allowed: %+v", host, r.Egress)
	}
	if r.Egress.Refused != 0 || r.Egress.Allowed == 0 {
		t.Errorf("allowed %d refused %d", r.Egress.Allowed, r.Egress.Refused)
	}
	for _, e := range r.Egress.Requests {
		if e.Decision == "allowed" && e.BytesIn == 0 {
			t.Errorf("an allowed request carried no bytes: %+v", e)
		}
	}
	assertNoNetworks(t)
	for _, line := range strings.Split(r.Stdout.Tail, "\n") {
		if v, ok := strings.CutPrefix(line, "proxy http://"); ok {
			if listening(t, v) {
				t.Errorf("the job's proxy listener %s is still open", v)
			}
		}
	}
}

// listening reports whether a TCP socket on this host listens on addr
// (ip:port), from /proc/net/tcp.
func listening(t *testing.T, addr string) bool {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	ip := ap.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == want && f[3] == "0A" {
			return true
		}
	}
	return false
}

func TestNoNetworkFailsFast(t *testing.T) {
	script := file(t, "npm.sh", "npm view is-number version --fetch-retries=0 --fetch-timeout=5000")
	start := time.Now()
	r := runJob(t, jobs.Submission{Script: script, Network: []string{"none"}})
	wantStatus(t, r, jobs.StatusFailed)
	if took := time.Since(start); took > 45*time.Second {
		t.Errorf("a job without network took %s to fail", took)
	}
	if r.Egress != nil {
		t.Errorf("a job without network lists egress: %+v", r.Egress)
	}
}

// probe runs inside a networked sandbox and prints one line per check:
// "ok NAME" when the connection (or request) succeeded, "blocked NAME
// detail" when it did not.
const probe = `
import json, os, socket, sys, urllib.request
proxy = os.environ["HTTPS_PROXY"][len("http://"):]
phost, pport = proxy.rsplit(":", 1)
print("self", phost)
def tcp(name, host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
        print("ok", name)
    except Exception as e:
        print("blocked", name, type(e).__name__)
    finally:
        s.close()
def udp(name, host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", (host, port))
        s.recvfrom(512)
        print("ok", name)
    except Exception as e:
        print("blocked", name, type(e).__name__)
def connect(name, target):
    s = socket.create_connection((phost, int(pport)), timeout=5)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    s.settimeout(5)
    resp = b""
    try:
        while len(resp) < 8192:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
            if resp.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in resp:
                break
    except socket.timeout:
        pass
    s.close()
    resp = resp.decode(errors="replace")
    status = resp.split(" ", 2)[1] if resp.startswith("HTTP/") else "none"
    body = resp.split("\r\n\r\n", 1)[-1].strip().replace("\n", " ")
    print("ok" if status == "200" else "blocked", name, status, body)
for arg in sys.argv[1:]:
    kind, name, target = arg.split("|")
    if kind == "tcp":
        h, p = target.rsplit(":", 1)
        tcp(name, h.strip("[]"), p)
    elif kind == "udp":
        h, p = target.rsplit(":", 1)
        udp(name, h, int(p))
    else:
        connect(name, target)
`

func checks(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) >= 2 && (f[0] == "ok" || f[0] == "blocked") {
			got[f[1]] = line
		}
	}
	return got
}

func TestEgressRefusesEverythingElse(t *testing.T) {
	// A host service listening on every address, as Redis, MinIO or the API
	// might; and the host's own address.
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	svc := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	hostIP := hostAddress(t)
	_, redisPort, _ := net.SplitHostPort(env.stack.RedisAddr)
	_, minioPort, _ := net.SplitHostPort(env.stack.MinioAddr)

	// Another networked job, running while the probe runs.
	other := submit(t, jobs.Submission{Script: file(t, "sleeper.sh", "sleep 120"), Network: []string{"npm"}})
	defer env.client.Cancel(context.Background(), other.ID)
	waitActive(t, other.ID)
	// While it runs, its proxy listens on the host side of its pair (the
	// check the npm test uses to see listeners are gone).
	if !listening(t, "10.200.0.1:3128") && !listening(t, "10.200.0.5:3128") {
		t.Error("no proxy listener for the running networked job")
	}

	args := []string{
		"tcp|public-ip|1.1.1.1:443",
		"udp|dns|1.1.1.1:53",
		"udp|dns-gw|10.200.0.1:53",
		"tcp|host-service|" + hostIP + ":" + svc,
		"tcp|host-redis|" + hostIP + ":" + redisPort,
		"tcp|host-minio|" + hostIP + ":" + minioPort,
		"tcp|metadata|169.254.169.254:80",
		"connect|proxy-allowed|" + npmHost(t) + ":443",
		"connect|proxy-other-host|example.org:443",
		"connect|proxy-wrong-port|" + npmHost(t) + ":8443",
		"connect|proxy-loopback|127.0.0.1:" + redisPort,
		"connect|proxy-decimal|2130706433:" + minioPort,
		"connect|proxy-octal|0177.0.0.1:" + minioPort,
		"connect|proxy-hex|0x7f.1:" + minioPort,
		"connect|proxy-v6-loopback|[::1]:" + minioPort,
		"connect|proxy-v4-mapped|[::ffff:127.0.0.1]:" + minioPort,
		"connect|proxy-metadata|169.254.169.254:80",
		"connect|proxy-host-service|" + hostIP + ":" + svc,
		"connect|proxy-localhost|localhost:" + redisPort,
	}
	// Every job address in the first few pairs except this job's own
	// proxy: the other job's proxy and sandbox address among them.
	for _, a := range []string{"10.200.0.1", "10.200.0.2", "10.200.0.5", "10.200.0.6", "10.200.0.9", "10.200.0.10"} {
		args = append(args, "tcp|job-"+a+"|"+a+":3128", "tcp|job-"+a+"-redis|"+a+":"+redisPort)
	}
	r := runJob(t, jobs.Submission{Script: file(t, "probe.py", probe), Args: args, Network: []string{"npm"}})
	wantStatus(t, r, jobs.StatusSucceeded)
	got := checks(t, r.Stdout.Tail)
	self := ""
	for _, line := range strings.Split(r.Stdout.Tail, "\n") {
		if v, ok := strings.CutPrefix(line, "self "); ok {
			self = v
		}
	}
	if !strings.HasPrefix(got["job-"+self], "ok ") {
		t.Errorf("the job could not reach its own proxy endpoint %s:\n%s", self, r.Stdout.Tail)
	}
	if !strings.HasPrefix(got["proxy-allowed"], "ok ") {
		t.Errorf("the allowed host through the proxy: %q", got["proxy-allowed"])
	}
	for name, line := range got {
		if strings.HasPrefix(line, "ok ") && name != "proxy-allowed" && name != "job-"+self {
			t.Errorf("reached: %s", line)
		}
	}
	for _, a := range args {
		name := strings.Split(a, "|")[1]
		if _, ok := got[name]; !ok {
			t.Errorf("check %s did not run:\n%s", name, r.Stdout.Tail+r.Stderr.Tail)
		}
	}
	if line := got["proxy-other-host"]; !strings.Contains(line, "403") || !strings.Contains(line, "example.org") || !strings.Contains(line, "allowlist") {
		t.Errorf("refusal of another host: %q", line)
	}
	if !event(r, "example.org", "refused") {
		t.Errorf("example.org is not listed as refused: %+v", r.Egress.Requests)
	}
	for _, name := range []string{"proxy-decimal", "proxy-octal", "proxy-hex", "proxy-v6-loopback", "proxy-v4-mapped", "proxy-loopback", "proxy-wrong-port", "proxy-metadata", "proxy-host-service", "proxy-localhost"} {
		if !strings.Contains(got[name], " 403 ") {
			t.Errorf("%s: %q, want 403", name, got[name])
		}
	}
}

func TestNetworkBeyondTheQueueIsRefusedAtEnqueue(t *testing.T) {
	for _, c := range []struct {
		network []string
		queue   string
		want    string
	}{
		{[]string{"github"}, "", "group github"},
		{[]string{"npm", "evil.example.net"}, "", "evil.example.net"},
		{[]string{"*.com"}, "", "*.com"},
		{[]string{"nosuchgroup"}, "", "unknown group"},
		{[]string{"npm"}, "other", `queue "other" allows no network`},
		{[]string{"none", "npm"}, "", "cannot be combined"},
	} {
		_, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Network: c.network, Queue: c.queue})
		var fe *jobs.FieldError
		if !errors.As(err, &fe) || fe.Field != "network" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("network %v on %q: %v, want a refusal naming %q", c.network, c.queue, err, c.want)
		}
	}
	// "default" is the queue's default groups.
	r := runJob(t, jobs.Submission{Script: file(t, "env.sh", `echo "$HTTPS_PROXY"`), Network: []string{"default"}})
	wantStatus(t, r, jobs.StatusSucceeded)
	if r.Egress == nil || strings.Join(r.Egress.Hosts, ",") != npmHost(t) || !strings.HasPrefix(r.Stdout.Tail, "http://10.200.") {
		t.Errorf("default network: %+v, proxy %q", r.Egress, r.Stdout.Tail)
	}
}

func waitActive(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		st, err := env.client.Status(context.Background(), id)
		if err == nil && st.State == jobs.StateActive {
			time.Sleep(500 * time.Millisecond) // its sandbox and network come up
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("job %s never became active", id)
}

// hostAddress is one of this host's non-loopback IPv4 addresses outside
// the job pool.
func hostAddress(t *testing.T) string {
	t.Helper()
	return testenv.HostAddress(t, netip.MustParsePrefix("10.200.0.0/16"))
}

// assertNoNetworks checks that no job network of the test worker is left.
func assertNoNetworks(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for env.worker.Running() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	assertNoNetworksOf(t, env.runner.WorkerID())
}

// assertNoNetworksOf fails t if the runner of worker ID workerID left any
// job network: address leases, namespaces, interfaces or firewall rules.
func assertNoNetworksOf(t *testing.T, workerID string) {
	t.Helper()
	m, err := jobnet.New(jobnet.Config{WorkerID: "e2e-check"})
	if err != nil {
		t.Fatal(err)
	}
	leases, netns, ifaces, rules, err := m.Resources(workerID)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases)+len(netns)+len(ifaces)+len(rules) != 0 {
		t.Errorf("job networks left: leases %v netns %v ifaces %v rules %v", leases, netns, ifaces, rules)
	}
}

// standInHost is the stand-in upstream's name: a standInWorker's proxy
// resolves it to loopback, where the test's server listens, and resolves
// nothing else.
const standInHost = "upstream.sandq.test"

// standInUpstream is an HTTP server on loopback standing for an allowed
// host; it answers 404 with no body and remembers the URLs it was asked.
type standInUpstream struct {
	port int
	mu   sync.Mutex
	urls []string
}

func newStandInUpstream(t *testing.T) *standInUpstream {
	t.Helper()
	u := &standInUpstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.urls = append(u.urls, r.URL.String())
		u.mu.Unlock()
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	u.port = srv.Listener.Addr().(*net.TCPAddr).Port
	return u
}

func (u *standInUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.urls)
}

// startStandInWorker starts a worker whose proxy resolves standInHost to
// loopback and may reach the stand-in upstream there (and nothing else on
// loopback), serving one queue whose jobs may reach standInHost on the
// upstream's port.
func startStandInWorker(t *testing.T, up *standInUpstream) (*sandqtest.Worker, string) {
	t.Helper()
	const queue = "egress-standin"
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{queue: 1}
	cfg.Worker.Concurrency = 1
	cfg.Worker.ShutdownGrace = time.Second
	cfg.Egress.Groups = map[string][]string{"standin": {standInHost}}
	cfg.Egress.Queues = map[string]jobs.QueueEgress{queue: {Max: []string{"standin"}, Default: []string{"standin"}, Ports: []int{up.port}}}
	proxy := egress.Config{Resolver: testenv.Resolver{standInHost: testenv.Loopback}, AllowRanges: []string{"127.0.0.1/32"}}
	return startWorker(t, cfg, executor.RunscConfig{StateDir: env.state, Network: &executor.NetworkConfig{Proxy: proxy}}), queue
}

// TestEgressAuditKeepsAllowedPastRefusals: a job that first makes 1000
// refused CONNECTs (the audit's whole list) and then one allowed request
// carrying data in its URL gets a result that counts every request, lists
// the allowed one, totals it per destination with its bytes, and sums the
// refusals up.
func TestEgressAuditKeepsAllowedPastRefusals(t *testing.T) {
	up := newStandInUpstream(t)
	w, queue := startStandInWorker(t, up)
	secret := strings.Repeat("5ec2e7", 300)
	script := file(t, "flood.py", fmt.Sprintf(`import os, socket, urllib.request, urllib.error
host, port = os.environ["HTTP_PROXY"][len("http://"):].rsplit(":", 1)
refused = 0
for i in range(1000):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(("CONNECT evil%%d.example:443 HTTP/1.1\r\nHost: evil%%d.example:443\r\n\r\n" %% (i, i)).encode())
    if s.recv(4096).startswith(b"HTTP/1.1 403"):
        refused += 1
    s.close()
print("refused", refused)
try:
    urllib.request.urlopen("http://%s:%d/x?d=%s", timeout=10)
except urllib.error.HTTPError as e:
    print("allowed request answered", e.code)
`, standInHost, up.port, secret))
	r := w.Run(t, jobs.Submission{Script: script, Queue: queue, Network: []string{"standin"}, Limits: jobs.LimitRequest{TimeoutSeconds: 240}}, 5*time.Minute)
	wantStatus(t, r, jobs.StatusSucceeded)
	if !strings.Contains(r.Stdout.Tail, "refused 1000") || !strings.Contains(r.Stdout.Tail, "allowed request answered 404") {
		t.Fatalf("the job did not do what it should:\n%s", r.Stdout.Tail)
	}
	if got := up.seen(); len(got) != 1 || !strings.Contains(got[0], secret) {
		t.Fatalf("the stand-in upstream saw %d requests", len(got))
	}
	e := r.Egress
	if e.Allowed != 1 || e.Refused != 1000 || e.Failed != 0 || e.RequestsUnlisted != 1 || len(e.Requests) != 1000 {
		t.Errorf("egress: allowed %d refused %d failed %d, %d requests listed, %d unlisted", e.Allowed, e.Refused, e.Failed, len(e.Requests), e.RequestsUnlisted)
	}
	var allowed *jobs.EgressEvent
	for i := range e.Requests {
		if e.Requests[i].Decision == jobs.EgressAllowed {
			allowed = &e.Requests[i]
		}
	}
	if allowed == nil || allowed.Host != standInHost || allowed.Port != up.port || allowed.Method != "GET" || allowed.BytesOut < int64(len(secret)) || allowed.BytesIn == 0 {
		t.Errorf("the allowed request listed: %+v", allowed)
	}
	if len(e.Destinations) != 1 || e.Destinations[0].Host != standInHost || e.Destinations[0].Allowed != 1 ||
		e.Destinations[0].BytesOut < int64(len(secret)) || e.BytesOut != e.Destinations[0].BytesOut || e.OtherDestinations != nil {
		t.Errorf("destinations %+v, other %+v, bytes out %d", e.Destinations, e.OtherDestinations, e.BytesOut)
	}
	n := 0
	for _, ref := range e.Refusals {
		n += ref.Count
	}
	if e.OtherRefusals != nil {
		n += e.OtherRefusals.Count
	}
	if n != 1000 || len(e.Refusals) != 256 {
		t.Errorf("refusals add up to %d in %d entries, want 1000 in 256 (and the rest in other_refusals: %+v)", n, len(e.Refusals), e.OtherRefusals)
	}
	if e.Bypass == nil || e.Bypass.Attempts != 0 {
		t.Errorf("a job that only used its proxy: bypass %+v", e.Bypass)
	}
}

// TestDirectSocketsAreRefusedAtOnce: a networked job that ignores its
// proxy — direct sockets to a host beyond this one, to the host's own
// address, to its own gateway — fails at once with "connection refused"
// instead of waiting for its timeout, nothing reaches the stand-in host,
// and the result counts each attempt.
func TestDirectSocketsAreRefusedAtOnce(t *testing.T) {
	farAddr, accepted := testenv.StandInHost(t, testenv.StandInNet{Name: "sandq-e2e-standin", HostIf: "e2estin0h", PeerIf: "e2estin0n", Subnet: netip.MustParsePrefix("10.209.9.0/30")})
	far := farAddr.String()
	l, hostConns := testenv.Listen(t, "0.0.0.0:0")
	svc := fmt.Sprint(l.Port)
	targets := []string{
		"tcp:" + far + ":9999",
		"tcp:" + far + ":443",
		"tcp:" + far + ":3128",
		"udp:" + far + ":53",
		"tcp:" + hostAddress(t) + ":" + svc,
		"udp:" + hostAddress(t) + ":53",
	}
	start := time.Now()
	// The probe's timeout is 10s: refused means at once, not timed out.
	r := runJob(t, jobs.Submission{Script: file(t, "direct.py", testenv.BypassProbe), Args: append([]string{"10"}, targets...), Network: []string{"npm"}})
	wantStatus(t, r, jobs.StatusSucceeded)
	lines := testenv.ProbeResults(r.Stdout.Tail)
	for _, target := range targets {
		got := lines[target]
		if len(got) != 2 || got[0] != "ConnectionRefusedError" {
			t.Errorf("%s: %v, want ConnectionRefusedError\nstdout:\n%s\nstderr:\n%s", target, got, r.Stdout.Tail, r.Stderr.Tail)
			continue
		}
		t.Logf("%s: refused after %ss", target, got[1])
	}
	if n := accepted(); n != 0 || hostConns.Load() != 0 {
		t.Errorf("the stand-in host accepted %d connections from the job, the host service %d", n, hostConns.Load())
	}
	if e := r.Egress; e == nil || e.Bypass == nil || e.Bypass.Attempts != int64(len(targets)) || e.Allowed+e.Refused+e.Failed != 0 {
		t.Errorf("egress %+v (bypass %+v), want %d bypass attempts and no requests", e, e.Bypass, len(targets))
	}
	t.Logf("job done %s after submission; %d bypass attempts refused", time.Since(start).Round(time.Millisecond), r.Egress.Bypass.Attempts)
	assertNoNetworks(t)
}
