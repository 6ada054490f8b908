package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis topologies (RedisTLS, StartSentinel, StartCluster) run each
// redis-server as a child process of its own (Process, in a process group
// of its own), from a config file in a temporary directory of the test
// that also holds its data and its log. What follows is what they share.

const (
	// DefaultRedisHost is where the topologies listen unless told.
	DefaultRedisHost = "127.0.0.1"
	// redisReadyTimeout bounds the wait for one redis-server to answer.
	redisReadyTimeout = 20 * time.Second
	// topologyReadyTimeout bounds the wait for a whole topology to settle
	// (sentinels discover each other, replicas sync, cluster slots agree).
	topologyReadyTimeout = 40 * time.Second
	// portAttempts is how many times a node is started on fresh ports when
	// another process took one of the free ports first.
	portAttempts = 3
	// logTailLines is how much of a node's log an error quotes.
	logTailLines = 30
	// probeTimeout bounds one look at a node (dial, reply).
	probeTimeout = time.Second
	// pollInterval is how often a wait looks again.
	pollInterval = 50 * time.Millisecond
)

// errAddrInUse: a port picked as free was taken before redis-server bound it.
var errAddrInUse = errors.New("address already in use")

// redisNode is one redis-server process of a topology: where it listens,
// its directory (config file, data, log), how its config file reads, and
// the process running it now (a node may be killed and started again on
// the same port and directory).
type redisNode struct {
	name string // "primary", "replica-1", "sentinel-2", "node-3": in logs and errors
	host string
	// port is its client port; busPort a second port (the cluster bus).
	port, busPort int
	dir           string
	// conf is its config file's lines; it is written anew at every start.
	conf func(n *redisNode) []string
	// args follow the config file on the command line (--sentinel).
	args []string
	// ready says whether the started server answers (redisAnswers).
	ready func(ctx context.Context, n *redisNode) error

	mu   sync.Mutex
	proc *Process
}

func (n *redisNode) addr() string { return net.JoinHostPort(n.host, strconv.Itoa(n.port)) }

func (n *redisNode) logPath() string { return filepath.Join(n.dir, "redis.log") }

// process is the process running it now (nil before its first start).
func (n *redisNode) process() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// alive reports whether its process runs.
func (n *redisNode) alive() bool {
	p := n.process()
	return p != nil && p.Alive()
}

// launch starts a new node on free ports of its host (and a bus port
// when bus is set), picking fresh ports when one is taken before the
// server binds it, and stops it when the test ends. It fails t, with the
// node's log tail, when the node does not start.
func launch(t testing.TB, n *redisNode, bus bool) {
	t.Helper()
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.kill)
	want := 1
	if bus {
		want = 2
	}
	var err error
	for range portAttempts {
		ports, perr := freePorts(n.host, want)
		if perr != nil {
			t.Fatal(perr)
		}
		n.port = ports[0]
		if bus {
			n.busPort = ports[1]
		}
		if err = n.start(); !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

// start writes the node's config file, starts redis-server on it and
// waits until it answers. The error quotes its log's tail.
func (n *redisNode) start() error {
	conf := filepath.Join(n.dir, "redis.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(n.conf(n), "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("%s: write config: %w", n.name, err)
	}
	// Each start's output is marked, so a tail shows this start's lines.
	if err := appendFile(n.logPath(), fmt.Sprintf("--- testenv: start %s on %s\n", n.name, n.addr())); err != nil {
		return err
	}
	p, err := StartProcess(exec.Command("redis-server", append([]string{conf}, n.args...)...), n.logPath())
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), redisReadyTimeout)
	defer cancel()
	if err := waitNode(ctx, n, func(ctx context.Context) error { return n.ready(ctx, n) }); err != nil {
		n.kill()
		if strings.Contains(p.Output(), "Address already in use") {
			return fmt.Errorf("%s: %w: %w", n.name, errAddrInUse, err)
		}
		return err
	}
	return nil
}

// waitNode polls cond until it passes, the node's process exits, or ctx
// ends; the error quotes the node's log tail.
func waitNode(ctx context.Context, n *redisNode, cond func(ctx context.Context) error) error {
	p := n.process()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("redis-server %s (%s) exited (%v):\n%s", n.name, n.addr(), p.Err(), n.logTail())
		case <-ctx.Done():
			return fmt.Errorf("redis-server %s (%s) not ready: %w (%w); its log ends:\n%s", n.name, n.addr(), err, context.Cause(ctx), n.logTail())
		case <-time.After(pollInterval):
		}
	}
}

// kill SIGKILLs the node's process group, if its process runs, and waits
// until it has exited. redis-server forks for snapshots and full syncs; the
// group takes the fork along.
func (n *redisNode) kill() {
	p := n.process()
	if p == nil || !p.Alive() {
		return
	}
	syscall.Kill(-p.Pid(), syscall.SIGKILL) // its own group: Setpgid
	<-p.Exited()
}

// logTail is the last logTailLines lines of the node's log.
func (n *redisNode) logTail() string {
	b, err := os.ReadFile(n.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return "  " + n.name + "| " + strings.Join(lines, "\n  "+n.name+"| ")
}

// baseConf is what every node's config file starts with: where it
// listens, where it keeps its files, no daemon, no protected mode (the
// multi-host tests reach it over a bridge), and no snapshots.
func baseConf(n *redisNode) []string {
	return []string{
		"bind " + n.host,
		"port " + strconv.Itoa(n.port),
		"dir " + confQuote(n.dir),
		"daemonize no",
		"protected-mode no",
		`logfile ""`,
		`save ""`,
	}
}

// dataConf is baseConf for a data node (not a sentinel): its own
// address as the source of its connections and in what it tells its
// primary (else a replica bound to 127.0.0.2 is known as 127.0.0.1),
// persistence as asked, full syncs at once (not after the default 5 s
// wait for more replicas), and the password, both to clients
// (requirepass) and to the primary it replicates (masterauth).
func dataConf(n *redisNode, password string, appendOnly bool) []string {
	conf := append(baseConf(n),
		"bind-source-addr "+n.host, "replica-announce-ip "+n.host,
		"appendonly "+yesNo(appendOnly), "repl-diskless-sync-delay 0")
	if password != "" {
		conf = append(conf, "requirepass "+confQuote(password), "masterauth "+confQuote(password))
	}
	return conf
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// confQuote quotes s for a redis.conf line.
func confQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}

// freePorts is n distinct TCP ports on host that nothing listened on a
// moment ago.
func freePorts(host string, n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port on %s: %w", host, err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// redisHost is host, or DefaultRedisHost when empty; it must be an IP
// address (redis-server binds addresses, and sentinels and cluster nodes
// announce them).
func redisHost(host string) (string, error) {
	if host == "" {
		return DefaultRedisHost, nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return "", fmt.Errorf("Host %q: want an IP address to bind: %w", host, err)
	}
	return host, nil
}

// logStart logs how long a topology took to start.
func logStart(t testing.TB, what string, began time.Time) {
	t.Helper()
	t.Logf("testenv: %s ready in %s", what, time.Since(began).Round(time.Millisecond))
}

// redisAnswersWith is redisAnswers for a client with options o (TLS, a
// password): any reply, an error reply too, is a server that is up.
func redisAnswersWith(ctx context.Context, o *redis.Options) error {
	o.DialTimeout, o.ReadTimeout, o.MaxRetries = probeTimeout, probeTimeout, -1
	c := redis.NewClient(o)
	defer c.Close()
	err := c.Ping(ctx).Err()
	var reply redis.Error
	if errors.As(err, &reply) {
		return nil
	}
	return err
}

// probeClient is a client for one look at the node at addr: short
// timeouts, no retries.
func probeClient(addr, password string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, Password: password, DialTimeout: probeTimeout, ReadTimeout: probeTimeout, MaxRetries: -1})
}

// replication is INFO replication on the node at addr, field by field.
func replication(ctx context.Context, addr, password string) (map[string]string, error) {
	c := probeClient(addr, password)
	defer c.Close()
	text, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO on %s: %w", addr, err)
	}
	return infoFields(text), nil
}

// replicaSynced says why the INFO replication fields info of node name
// are not those of a replica in sync with its primary (nil if they are).
func replicaSynced(name string, info map[string]string) error {
	if info["role"] != "slave" || info["master_link_status"] != "up" || info["master_sync_in_progress"] != "0" {
		return fmt.Errorf("%s not a replica in sync: role %s, master_link_status %s, master_sync_in_progress %s",
			name, info["role"], info["master_link_status"], info["master_sync_in_progress"])
	}
	return nil
}

// infoFields parses INFO's "key:value" lines.
func infoFields(text string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}
