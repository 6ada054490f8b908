package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Resolver is a stand-in DNS resolver for egress proxies under test, like
// a hosts file: it maps the names it holds (lower case, without the final
// dot) to their addresses and answers "no such host" for every other, so
// that nothing a test does resolves a real name.
type Resolver map[string][]net.IP

// Loopback is 127.0.0.1, for Resolver entries.
var Loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

// LookupIP answers for the names r holds.
func (r Resolver) LookupIP(_ context.Context, _ string, host string) ([]net.IP, error) {
	if ips, ok := r[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// LookupPort is the system's (service names, not hosts).
func (Resolver) LookupPort(ctx context.Context, network, service string) (int, error) {
	return net.DefaultResolver.LookupPort(ctx, network, service)
}

// HostAddress is one of this host's own non-loopback IPv4 addresses
// outside pool (the job network pool of the test, whose addresses come and
// go), for tests that a job must not reach the host's services on.
func HostAddress(t testing.TB, pool netip.Prefix) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok && !pool.Contains(ip) {
				return ip.String()
			}
		}
	}
	t.Fatal("no non-loopback IPv4 address on this host")
	return ""
}

// StandInNet says where a stand-in host lives: a network namespace Name,
// the veth pair HostIf (on the host) and PeerIf (in the namespace), and a
// /30 whose first address is the host's side and second the stand-in's.
type StandInNet struct {
	Name, HostIf, PeerIf string
	Subnet               netip.Prefix
}

// StandInHost makes a stand-in for a host beyond this one — any address
// a job might try to reach directly — as a network namespace of its own
// behind a veth pair, routed from the host, with a TCP listener on port
// 9999. It checks the premise (the host reaches it) and returns its
// address and a count of the connections it accepted since. Everything is
// removed when the test ends. It needs root (NeedNetns).
func StandInHost(t testing.TB, n StandInNet) (netip.Addr, func() int) {
	t.Helper()
	host := n.Subnet.Addr().Next()
	far := host.Next()
	bits := fmt.Sprintf("/%d", n.Subnet.Bits())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "delete", n.Name).Run()
	exec.Command("ip", "link", "delete", n.HostIf).Run()
	run("netns", "add", n.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", n.Name).Run() })
	run("link", "add", n.HostIf, "type", "veth", "peer", "name", n.PeerIf, "netns", n.Name)
	run("addr", "add", host.String()+bits, "dev", n.HostIf)
	run("link", "set", n.HostIf, "up")
	run("-n", n.Name, "addr", "add", far.String()+bits, "dev", n.PeerIf)
	run("-n", n.Name, "link", "set", n.PeerIf, "up")
	run("-n", n.Name, "link", "set", "lo", "up")
	run("-n", n.Name, "route", "add", "default", "via", host.String())
	srv := exec.Command("ip", "netns", "exec", n.Name, "python3", "-u", "-c", `import socket
s = socket.socket(); s.bind(("0.0.0.0", 9999)); s.listen()
print("listening")
while True:
    s.accept()[0].close()
    print("accepted")`)
	var out SyncBuffer
	srv.Stdout = &out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "listening") {
		if time.Now().After(deadline) {
			t.Fatal("the stand-in host's listener did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The premise: the host reaches it.
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(far, 9999).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("the stand-in host does not answer the host: %v", err)
	}
	c.Close()
	for !strings.Contains(out.String(), "accepted") {
		if time.Now().After(deadline) {
			t.Fatal("the stand-in host's listener did not count the host's connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return far, func() int { return strings.Count(out.String(), "accepted") - 1 }
}

// Listen accepts TCP connections on addr ("0.0.0.0:0": any free port)
// and closes each at once, until the test ends. It returns the address it
// listens on and the count of connections it accepted.
func Listen(t testing.TB, addr string) (*net.TCPAddr, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr), &accepted
}

// BypassProbe is a Python script that tries to reach targets directly,
// as a job ignoring its proxy would. Its arguments: a timeout in seconds,
// then targets "tcp|udp:HOST:PORT"; it prints a line a target, "KIND
// HOST:PORT OUTCOME SECONDS", OUTCOME "connected" or the exception's name
// (ConnectionRefusedError, TimeoutError, ...). ProbeResults reads it.
const BypassProbe = `
import socket, sys, time
timeout = float(sys.argv[1])
for arg in sys.argv[2:]:
    kind, host, port = arg.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((host, int(port)))
        if kind == "udp":
            s.send(b"x")
            s.recv(16)
        out = "connected"
    except Exception as e:
        out = type(e).__name__
    print(kind, host + ":" + port, out, "%.3f" % (time.monotonic() - t), flush=True)
    s.close()
`

// ProbeResults reads BypassProbe's output: target -> [outcome, seconds].
func ProbeResults(out string) map[string][]string {
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 4 {
			got[f[0]+":"+f[1]] = f[2:]
		}
	}
	return got
}

// SyncBuffer is a bytes.Buffer safe for a writer and readers at once (a
// child process's output read while it runs).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Fetch GETs url and returns the response with its body read; anything
// but 200 OK fails the test.
func Fetch(t testing.TB, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v: %.1000s", url, resp.Status, err, b)
	}
	return resp, b
}
