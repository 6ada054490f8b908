package jobs

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
)

// TestRedisClusterMultiKeyOperations runs every multi-key operation sandq
// does beside asynq's on a real Redis Cluster: a tenant's reservation,
// its index transaction (ZADD and trim of the list, DEL of the
// reservation, one MULTI/EXEC), the pruning of its open set and the
// release of a reservation. The keys of the old layout, without hash
// tags, are refused (CROSSSLOT): the check that the test can fail.
func TestRedisClusterMultiKeyOperations(t *testing.T) {
	cl := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx := context.Background()
	cfg := validConfig()
	cfg.RedisAddr, cfg.RedisCluster = "", cl.Addrs()
	c, err := NewClient(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("client is %T, want a cluster client", c.rdb)
	}

	t.Run("old key layout is CROSSSLOT", func(t *testing.T) {
		_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAdd(ctx, "sandq:tenant:acme:jobs", redis.Z{Score: 1, Member: "default x"})
			p.Del(ctx, "sandq:reserving:default:x")
			return nil
		})
		if !errors.Is(err, redis.ErrCrossSlot) {
			t.Fatalf("transaction over the untagged keys: %v, want CROSSSLOT", err)
		}
	})

	for _, tenant := range []string{"acme", "beta.team-2", "z_9"} {
		t.Run("tenant "+tenant, func(t *testing.T) {
			job := &Job{ID: NewJobID(), Queue: DefaultQueue, Tenant: tenant, SubmittedAt: time.Now()}
			d := &Draft{c: c, job: job}
			if err := d.reserve(ctx, tenant, 10); err != nil {
				t.Fatalf("reserve: %v", err)
			}
			if n, _ := c.rdb.Exists(ctx, keys.Reservation(tenant, job.Queue, job.ID)).Result(); n != 1 {
				t.Fatal("no reservation key after reserve")
			}
			if err := c.indexTenantJob(ctx, job); err != nil {
				t.Fatalf("index transaction: %v", err)
			}
			if _, err := c.rdb.ZScore(ctx, keys.TenantJobs(tenant), openMember(job.Queue, job.ID)).Result(); err != nil {
				t.Fatalf("job not in the tenant's list: %v", err)
			}
			if n, _ := c.rdb.Exists(ctx, keys.Reservation(tenant, job.Queue, job.ID)).Result(); n != 0 {
				t.Fatal("the index transaction left the reservation")
			}
			// Not enqueued and no reservation left: pruning drops it.
			if err := c.pruneOpen(ctx, tenant); err != nil {
				t.Fatalf("prune: %v", err)
			}
			if n, _ := c.rdb.SCard(ctx, keys.TenantOpen(tenant)).Result(); n != 0 {
				t.Fatalf("open set holds %d after pruning, want 0", n)
			}
			// A second draft reserved and aborted leaves nothing.
			d2 := &Draft{c: c, job: &Job{ID: NewJobID(), Queue: DefaultQueue, Tenant: tenant}}
			if err := d2.reserve(ctx, tenant, 10); err != nil {
				t.Fatal(err)
			}
			d2.Abort(ctx)
			if n, _ := c.rdb.SCard(ctx, keys.TenantOpen(tenant)).Result(); n != 0 {
				t.Fatalf("open set holds %d after abort, want 0", n)
			}
		})
	}

	t.Run("tenant keys share one slot", func(t *testing.T) {
		tenant := "acme"
		want, err := c.rdb.ClusterKeySlot(ctx, keys.TenantJobs(tenant)).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{keys.TenantOpen(tenant), keys.TenantSeq(tenant), keys.Reservation(tenant, "q", "id")} {
			if got, _ := c.rdb.ClusterKeySlot(ctx, k).Result(); got != want {
				t.Errorf("%s in slot %d, %s in %d", k, got, keys.TenantJobs(tenant), want)
			}
		}
	})

	t.Run("cancel pub/sub", func(t *testing.T) {
		sub := c.rdb.Subscribe(ctx, keys.CancelChannel)
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		// A publisher on another connection, through any node.
		pub, err := Config{RedisCluster: cl.Addrs()[1:]}.NewRedisClient()
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		if err := pub.Publish(ctx, keys.CancelChannel, "job-1").Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub.Channel():
			if m.Payload != "job-1" {
				t.Fatalf("got %q", m.Payload)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no cancel message through the cluster")
		}
	})

	t.Run("eviction check asks every primary", func(t *testing.T) {
		if err := CheckRedisEviction(ctx, c.rdb); err != nil {
			t.Fatalf("all noeviction: %v", err)
		}
		cc := c.rdb.(*redis.ClusterClient)
		// One primary, not the one a random command would reach every time.
		var victim string
		cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			victim = n.Options().Addr
			return nil
		})
		node := redis.NewClient(&redis.Options{Addr: victim})
		defer node.Close()
		if err := node.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
			t.Fatal(err)
		}
		defer node.ConfigSet(ctx, "maxmemory-policy", "noeviction")
		err := CheckRedisEviction(ctx, c.rdb)
		if !errors.Is(err, ErrRedisEviction) || !strings.Contains(err.Error(), "cluster node "+victim) || !strings.Contains(err.Error(), "allkeys-lru") {
			t.Fatalf("one primary allkeys-lru: %v, want ErrRedisEviction naming %s", err, victim)
		}
	})
}

// TestRedisSentinelAwaitReplicas waits for replicas on a real Sentinel
// set with one replica: one acknowledges, two cannot; with the replica
// stopped, none does, and the error says what is at stake.
func TestRedisSentinelAwaitReplicas(t *testing.T) {
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 1})
	ctx := context.Background()
	cfg := validConfig()
	cfg.RedisAddr, cfg.RedisSentinels, cfg.RedisMasterName, cfg.RedisWaitReplicas = "", set.SentinelAddrs(), set.MasterName, 1
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rdb, err := cfg.NewRedisClient()
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := AwaitReplicas(ctx, rdb, cfg, "job x"); err != nil {
		t.Fatalf("one replica of one: %v", err)
	}
	two := cfg
	two.RedisWaitReplicas, two.RedisWaitTimeout = 2, 300*time.Millisecond
	began := time.Now()
	err = AwaitReplicas(ctx, rdb, two, "job x")
	if !errors.Is(err, ErrNotReplicated) || !strings.Contains(err.Error(), "job x: 1 of 2 replicas have it after 300ms; it may be lost if Redis fails over now") {
		t.Fatalf("two replicas of one: %v", err)
	}
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Errorf("returned after %s, before the timeout", d)
	}
	if err := AwaitReplicas(ctx, rdb, Config{}, "job x"); err != nil {
		t.Fatalf("wait off: %v", err)
	}
}
