package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel set defaults.
const (
	DefaultSentinelMaster    = "sandq"
	DefaultSentinelReplicas  = 1
	DefaultSentinels         = 3
	DefaultSentinelDownAfter = time.Second
	// sentinelFailoverTimeout is the sentinels' failover-timeout: small,
	// so that a failed election is tried again soon.
	sentinelFailoverTimeout = 5 * time.Second
	// sentinelRestartTimeout bounds Restart's wait for the node to sync.
	sentinelRestartTimeout = 30 * time.Second
)

// SentinelOptions say how to start a Sentinel set.
type SentinelOptions struct {
	// Host is the address every process binds (DefaultRedisHost when
	// empty); the multi-host tests pass a bridge address.
	Host string
	// MasterName is the name the sentinels monitor the primary by
	// (DefaultSentinelMaster when empty).
	MasterName string
	// Replicas (DefaultSentinelReplicas when 0) and Sentinels
	// (DefaultSentinels when 0; the quorum is a majority of them).
	Replicas, Sentinels int
	// DownAfter is the sentinels' down-after-milliseconds
	// (DefaultSentinelDownAfter when 0).
	DownAfter time.Duration
	// Password, when set, is required by the data nodes (requirepass) and
	// used between them (masterauth); the sentinels use it too (auth-pass)
	// but need none themselves.
	Password string
	// AppendOnly turns on AOF persistence on the data nodes.
	AppendOnly bool
}

// withDefaults fills in the defaults and checks o.
func (o SentinelOptions) withDefaults() (SentinelOptions, error) {
	var err error
	if o.Host, err = redisHost(o.Host); err != nil {
		return o, err
	}
	if o.MasterName == "" {
		o.MasterName = DefaultSentinelMaster
	}
	if strings.ContainsAny(o.MasterName, " \t\n\"'\\") {
		return o, fmt.Errorf("MasterName %q: no spaces or quotes", o.MasterName)
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultSentinelReplicas
	}
	if o.Sentinels == 0 {
		o.Sentinels = DefaultSentinels
	}
	if o.DownAfter == 0 {
		o.DownAfter = DefaultSentinelDownAfter
	}
	switch {
	case o.Replicas < 0:
		return o, fmt.Errorf("Replicas %d: want 1 or more", o.Replicas)
	case o.Sentinels < 0:
		return o, fmt.Errorf("Sentinels %d: want 1 or more", o.Sentinels)
	case o.DownAfter < time.Millisecond:
		return o, fmt.Errorf("DownAfter %s: want 1ms or more", o.DownAfter)
	}
	return o, nil
}

// SentinelSet is a primary, its replicas and the sentinels that monitor
// it, each a redis-server process of its own on a port of one host.
type SentinelSet struct {
	// MasterName is the name the sentinels know the primary by.
	MasterName string
	// Password is the data nodes' password ("" for none).
	Password string

	o         SentinelOptions
	data      []*redisNode // the primary first, as started
	sentinels []*redisNode
	mu        sync.Mutex // serializes Restart and KillPrimary
}

// StartSentinel starts a Sentinel set for one test, with its data under
// t.TempDir(), and returns once every sentinel names the primary and
// knows every replica and every other sentinel, and every replica is in
// sync. All its processes are killed when the test ends. Without
// redis-server the test is skipped under -short and fails otherwise.
func StartSentinel(t testing.TB, o SentinelOptions) *SentinelSet {
	t.Helper()
	NeedBinary(t, "redis-server")
	began := time.Now()
	o, err := o.withDefaults()
	if err != nil {
		t.Fatalf("StartSentinel: %v", err)
	}
	s := &SentinelSet{MasterName: o.MasterName, Password: o.Password, o: o}
	dir := t.TempDir()
	for i := range 1 + o.Replicas {
		name := "primary"
		if i > 0 {
			name = fmt.Sprintf("replica-%d", i)
		}
		n := &redisNode{name: name, host: o.Host, dir: filepath.Join(dir, name), ready: s.dataAnswers}
		if i > 0 {
			primary := s.data[0].addr()
			n.conf = func(n *redisNode) []string { return s.dataConf(n, primary) }
		} else {
			n.conf = func(n *redisNode) []string { return s.dataConf(n, "") }
		}
		launch(t, n, false)
		s.data = append(s.data, n)
	}
	primary := s.data[0]
	for i := range o.Sentinels {
		n := &redisNode{
			name: fmt.Sprintf("sentinel-%d", i+1), host: o.Host, args: []string{"--sentinel"},
			conf: func(n *redisNode) []string { return s.sentinelConf(n, primary) },
			ready: func(ctx context.Context, n *redisNode) error {
				return redisAnswersWith(ctx, &redis.Options{Addr: n.addr()})
			},
		}
		n.dir = filepath.Join(dir, n.name)
		launch(t, n, false)
		s.sentinels = append(s.sentinels, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), topologyReadyTimeout)
	defer cancel()
	if err := s.waitSettled(ctx, primary.addr()); err != nil {
		t.Fatalf("StartSentinel: %v\n%s", err, s.logTails())
	}
	logStart(t, fmt.Sprintf("Redis Sentinel (primary %s, %d replicas, %d sentinels)", primary.addr(), o.Replicas, o.Sentinels), began)
	return s
}

// dataConf is a data node's config: a replica of primary ("" for none).
func (s *SentinelSet) dataConf(n *redisNode, primary string) []string {
	conf := dataConf(n, s.o.Password, s.o.AppendOnly)
	if primary != "" {
		host, port, _ := net.SplitHostPort(primary)
		conf = append(conf, "replicaof "+host+" "+port)
	}
	return conf
}

// sentinelConf is a sentinel's config: it monitors primary.
func (s *SentinelSet) sentinelConf(n *redisNode, primary *redisNode) []string {
	name := s.MasterName
	conf := append(baseConf(n),
		"sentinel announce-ip "+n.host, // what the other sentinels know it by
		fmt.Sprintf("sentinel monitor %s %s %d %d", name, primary.host, primary.port, s.quorum()),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", name, s.o.DownAfter.Milliseconds()),
		fmt.Sprintf("sentinel failover-timeout %s %d", name, sentinelFailoverTimeout.Milliseconds()),
		fmt.Sprintf("sentinel parallel-syncs %s 1", name),
	)
	if s.o.Password != "" {
		conf = append(conf, fmt.Sprintf("sentinel auth-pass %s %s", name, confQuote(s.o.Password)))
	}
	return conf
}

// quorum is a majority of the sentinels.
func (s *SentinelSet) quorum() int { return s.o.Sentinels/2 + 1 }

func (s *SentinelSet) dataAnswers(ctx context.Context, n *redisNode) error {
	return redisAnswersWith(ctx, &redis.Options{Addr: n.addr(), Password: s.o.Password})
}

// SentinelAddrs are the sentinels' addresses (host:port), for a
// go-redis FailoverClient or sandq's --redis-sentinels.
func (s *SentinelSet) SentinelAddrs() []string {
	var addrs []string
	for _, n := range s.sentinels {
		addrs = append(addrs, n.addr())
	}
	return addrs
}

// DataAddrs are the data nodes' addresses, the primary as started first.
func (s *SentinelSet) DataAddrs() []string {
	var addrs []string
	for _, n := range s.data {
		addrs = append(addrs, n.addr())
	}
	return addrs
}

// Primary is the address (host:port) a majority of the sentinels name as
// the primary now.
func (s *SentinelSet) Primary(ctx context.Context) (string, error) {
	votes := map[string]int{}
	var errs []error
	for _, n := range s.sentinels {
		addr, err := s.sentinelNames(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		votes[addr]++
		if votes[addr] >= s.quorum() {
			return addr, nil
		}
	}
	return "", fmt.Errorf("no primary named by %d of %d sentinels (named: %v): %w", s.quorum(), len(s.sentinels), votes, errors.Join(errs...))
}

// sentinelNames asks one sentinel which address it names the primary.
func (s *SentinelSet) sentinelNames(ctx context.Context, n *redisNode) (string, error) {
	c := redis.NewSentinelClient(&redis.Options{Addr: n.addr(), DialTimeout: probeTimeout, ReadTimeout: probeTimeout, MaxRetries: -1})
	defer c.Close()
	hp, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		return "", fmt.Errorf("%s: %w", n.name, err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("%s: get-master-addr-by-name answered %q", n.name, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// KillPrimary SIGKILLs the process (group) of the node the sentinels name
// the primary now, and returns its address.
func (s *SentinelSet) KillPrimary(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), redisReadyTimeout)
	defer cancel()
	addr, err := s.Primary(ctx)
	if err != nil {
		t.Fatalf("KillPrimary: %v", err)
	}
	n := s.node(addr)
	if n == nil || !n.alive() {
		t.Fatalf("KillPrimary: the sentinels name %s, which is no running node of the set", addr)
	}
	n.kill()
	t.Logf("testenv: killed Redis primary %s (%s)", addr, n.name)
	return addr
}

// WaitFailover waits until a majority of the sentinels name a primary
// other than old and that node answers ROLE as a master, and returns its
// address.
func (s *SentinelSet) WaitFailover(ctx context.Context, old string) (string, error) {
	for {
		addr, err := s.Primary(ctx)
		if err == nil && addr == old {
			err = fmt.Errorf("the sentinels still name %s", old)
		}
		if err == nil {
			var role string
			if role, err = s.role(ctx, addr); err == nil && role != "master" {
				err = fmt.Errorf("%s is named primary but says it is a %s", addr, role)
			}
		}
		if err == nil {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no failover from %s: %w (%w)\n%s", old, err, context.Cause(ctx), s.logTails())
		case <-time.After(pollInterval):
		}
	}
}

// role is the first word of ROLE on the data node at addr: "master" or
// "slave".
func (s *SentinelSet) role(ctx context.Context, addr string) (string, error) {
	c := probeClient(addr, s.o.Password)
	defer c.Close()
	v, err := c.Do(ctx, "ROLE").Slice()
	if err != nil {
		return "", fmt.Errorf("ROLE on %s: %w", addr, err)
	}
	if len(v) == 0 {
		return "", fmt.Errorf("ROLE on %s: empty reply", addr)
	}
	role, _ := v[0].(string)
	return role, nil
}

// Restart starts the killed data node at addr again, on the same port and
// data directory, as a replica of the primary the sentinels name now (as
// the primary still, if they name it), and waits until it is in sync.
func (s *SentinelSet) Restart(t testing.TB, addr string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	began := time.Now()
	n := s.node(addr)
	switch {
	case n == nil:
		t.Fatalf("Restart %s: no data node of the set has this address (data nodes: %v)", addr, s.DataAddrs())
	case n.alive():
		t.Fatalf("Restart %s: %s still runs", addr, n.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), sentinelRestartTimeout)
	defer cancel()
	primary, err := s.Primary(ctx)
	if err != nil {
		t.Fatalf("Restart %s: %v", addr, err)
	}
	if primary == addr {
		primary = ""
	}
	n.conf = func(n *redisNode) []string { return s.dataConf(n, primary) }
	if err := n.start(); err != nil {
		t.Fatalf("Restart %s: %v", addr, err)
	}
	if primary != "" {
		if err := waitNode(ctx, n, func(ctx context.Context) error { return s.inSync(ctx, n) }); err != nil {
			t.Fatalf("Restart %s: %v", addr, err)
		}
	}
	logStart(t, fmt.Sprintf("restarted %s (%s) as a replica of %q", addr, n.name, primary), began)
}

// node is the data node at addr, or nil.
func (s *SentinelSet) node(addr string) *redisNode {
	for _, n := range s.data {
		if n.addr() == addr {
			return n
		}
	}
	return nil
}

// inSync: the replica n is in sync with its primary.
func (s *SentinelSet) inSync(ctx context.Context, n *redisNode) error {
	info, err := replication(ctx, n.addr(), s.o.Password)
	if err != nil {
		return err
	}
	return replicaSynced(n.name, info)
}

// waitSettled waits until every replica is in sync with primary and
// every sentinel names primary and knows every replica and every other
// sentinel, up and running.
func (s *SentinelSet) waitSettled(ctx context.Context, primary string) error {
	var err error
	for {
		if err = s.settled(ctx, primary); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Sentinel set did not settle: %w (%w)", err, context.Cause(ctx))
		case <-time.After(pollInterval):
		}
	}
}

func (s *SentinelSet) settled(ctx context.Context, primary string) error {
	for _, n := range s.data[1:] {
		if err := s.inSync(ctx, n); err != nil {
			return err
		}
	}
	for _, n := range s.sentinels {
		if err := s.sentinelSettled(ctx, n, primary); err != nil {
			return err
		}
	}
	return nil
}

// sentinelSettled: the sentinel n names primary, sees it up, and knows
// every replica (up) and every other sentinel.
func (s *SentinelSet) sentinelSettled(ctx context.Context, n *redisNode, primary string) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: n.addr(), DialTimeout: probeTimeout, ReadTimeout: probeTimeout, MaxRetries: -1})
	defer c.Close()
	m, err := c.Master(ctx, s.MasterName).Result()
	if err != nil {
		return fmt.Errorf("%s: SENTINEL MASTER: %w", n.name, err)
	}
	if got := net.JoinHostPort(m["ip"], m["port"]); got != primary || m["flags"] != "master" {
		return fmt.Errorf("%s: primary %s flags %q, want %s up", n.name, got, m["flags"], primary)
	}
	if m["num-slaves"] != strconv.Itoa(s.o.Replicas) || m["num-other-sentinels"] != strconv.Itoa(s.o.Sentinels-1) {
		return fmt.Errorf("%s: knows %s replicas and %s other sentinels, want %d and %d",
			n.name, m["num-slaves"], m["num-other-sentinels"], s.o.Replicas, s.o.Sentinels-1)
	}
	replicas, err := c.Replicas(ctx, s.MasterName).Result()
	if err != nil {
		return fmt.Errorf("%s: SENTINEL REPLICAS: %w", n.name, err)
	}
	for _, r := range replicas {
		if r["flags"] != "slave" || r["master-link-status"] != "ok" {
			return fmt.Errorf("%s: replica %s:%s flags %q link %q", n.name, r["ip"], r["port"], r["flags"], r["master-link-status"])
		}
	}
	return nil
}

// logTails is the end of every node's log, for an error.
func (s *SentinelSet) logTails() string {
	var b strings.Builder
	for _, n := range append(append([]*redisNode{}, s.data...), s.sentinels...) {
		b.WriteString(n.logTail())
		b.WriteString("\n")
	}
	return b.String()
}
