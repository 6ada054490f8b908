package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster defaults.
const (
	// DefaultClusterMasters is also the least redis-cli creates a
	// cluster with.
	DefaultClusterMasters = 3
	// clusterNodeTimeout is the nodes' cluster-node-timeout.
	clusterNodeTimeout = 2 * time.Second
	// clusterCreateTimeout bounds `redis-cli --cluster create`.
	clusterCreateTimeout = 60 * time.Second
)

// ClusterOptions say how to start a Redis Cluster.
type ClusterOptions struct {
	// Host is the address every node binds (DefaultRedisHost when empty).
	Host string
	// Masters (DefaultClusterMasters when 0, at least 3) share the 16384
	// slots; each has ReplicasPerMaster replicas.
	Masters, ReplicasPerMaster int
	// Password, when set, is required by every node (requirepass) and
	// used between them (masterauth).
	Password string
}

func (o ClusterOptions) withDefaults() (ClusterOptions, error) {
	var err error
	if o.Host, err = redisHost(o.Host); err != nil {
		return o, err
	}
	if o.Masters == 0 {
		o.Masters = DefaultClusterMasters
	}
	switch {
	case o.Masters < DefaultClusterMasters:
		return o, fmt.Errorf("Masters %d: Redis Cluster needs %d or more", o.Masters, DefaultClusterMasters)
	case o.ReplicasPerMaster < 0:
		return o, fmt.Errorf("ReplicasPerMaster %d: want 0 or more", o.ReplicasPerMaster)
	}
	return o, nil
}

// RedisCluster is a Redis Cluster of redis-server processes on ports of
// one host.
type RedisCluster struct {
	// Password is the nodes' password ("" for none).
	Password string

	o     ClusterOptions
	nodes []*redisNode
}

// StartCluster starts a Redis Cluster for one test (cluster-enabled
// nodes, joined and given their slots by `redis-cli --cluster create`),
// with its data under t.TempDir(), and returns once every node knows
// every other and says cluster_state:ok, and every replica is in sync. Its
// processes are killed when the test ends. Without redis-server and
// redis-cli the test is skipped under -short and fails otherwise.
func StartCluster(t testing.TB, o ClusterOptions) *RedisCluster {
	t.Helper()
	NeedBinary(t, "redis-server", "redis-cli")
	began := time.Now()
	o, err := o.withDefaults()
	if err != nil {
		t.Fatalf("StartCluster: %v", err)
	}
	c := &RedisCluster{Password: o.Password, o: o}
	dir := t.TempDir()
	for i := range o.Masters * (1 + o.ReplicasPerMaster) {
		n := &redisNode{name: fmt.Sprintf("node-%d", i+1), host: o.Host, conf: c.nodeConf, ready: c.answers}
		n.dir = filepath.Join(dir, n.name)
		launch(t, n, true)
		c.nodes = append(c.nodes, n)
	}
	if err := c.create(dir); err != nil {
		t.Fatalf("StartCluster: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), topologyReadyTimeout)
	defer cancel()
	for _, n := range c.nodes {
		if err := waitNode(ctx, n, func(ctx context.Context) error { return c.nodeSettled(ctx, n) }); err != nil {
			t.Fatalf("StartCluster: %v", err)
		}
	}
	logStart(t, fmt.Sprintf("Redis Cluster (%d masters, %d replicas each) on %s", o.Masters, o.ReplicasPerMaster, o.Host), began)
	return c
}

// nodeConf is a cluster node's config: its bus on its second port.
func (c *RedisCluster) nodeConf(n *redisNode) []string {
	return append(dataConf(n, c.o.Password, false),
		"cluster-enabled yes",
		"cluster-announce-ip "+n.host,
		"cluster-config-file nodes.conf",
		"cluster-port "+strconv.Itoa(n.busPort),
		"cluster-node-timeout "+strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10),
	)
}

func (c *RedisCluster) answers(ctx context.Context, n *redisNode) error {
	return redisAnswersWith(ctx, &redis.Options{Addr: n.addr(), Password: c.o.Password})
}

// create runs `redis-cli --cluster create` on every node; its output goes
// to dir/cluster-create.log and is quoted when it fails.
func (c *RedisCluster) create(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(c.o.ReplicasPerMaster), "--cluster-yes")
	cmd := exec.CommandContext(ctx, "redis-cli", args...)
	cmd.Env = os.Environ()
	if c.o.Password != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+c.o.Password) // not on the command line
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	os.WriteFile(filepath.Join(dir, "cluster-create.log"), out.Bytes(), 0o600)
	if err != nil || !strings.Contains(out.String(), "[OK] All 16384 slots covered") {
		return fmt.Errorf("redis-cli %s: %v:\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

// nodeSettled: n says cluster_state:ok, knows every node, sees every
// master, and (a replica) is in sync with its master.
func (c *RedisCluster) nodeSettled(ctx context.Context, n *redisNode) error {
	cl := probeClient(n.addr(), c.o.Password)
	defer cl.Close()
	text, err := cl.ClusterInfo(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER INFO on %s: %w", n.name, err)
	}
	ci := infoFields(text)
	if ci["cluster_state"] != "ok" || ci["cluster_known_nodes"] != strconv.Itoa(len(c.nodes)) || ci["cluster_size"] != strconv.Itoa(c.o.Masters) {
		return fmt.Errorf("%s: cluster_state %s, cluster_known_nodes %s, cluster_size %s; want ok, %d, %d",
			n.name, ci["cluster_state"], ci["cluster_known_nodes"], ci["cluster_size"], len(c.nodes), c.o.Masters)
	}
	ri, err := replication(ctx, n.addr(), c.o.Password)
	if err != nil || ri["role"] != "slave" {
		return err
	}
	return replicaSynced(n.name, ri)
}

// Addrs are every node's address (host:port), masters and replicas, for
// a go-redis ClusterClient or sandq's --redis-cluster.
func (c *RedisCluster) Addrs() []string {
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr())
	}
	return addrs
}
