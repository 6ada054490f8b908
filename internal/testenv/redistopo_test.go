package testenv_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/testenv"
)

// ping PINGs a TLS Redis at addr with tlsConfig once, without retries.
func ping(addr string, tlsConfig *tls.Config) error {
	c := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tlsConfig, MaxRetries: -1, DialTimeout: 5 * time.Second})
	defer c.Close()
	return c.Ping(context.Background()).Err()
}

// TestRedisTLS: a TLS-only Redis answers a client that trusts its CA; a
// client that does not is refused for the certificate; the plain port is
// off.
func TestRedisTLS(t *testing.T) {
	testenv.Long(t, "starts a TLS redis-server")
	addr, files := testenv.RedisTLS(t, testenv.RedisTLSOptions{})
	withCA, err := files.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(addr, withCA); err != nil {
		t.Errorf("PING with the CA: %v", err)
	}
	err = ping(addr, &tls.Config{MinVersion: tls.VersionTLS12}) // the system's roots only
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("PING without the CA: %v, want a certificate signed by unknown authority", err)
	}
	if err := ping(addr, nil); err == nil {
		t.Error("PING in plain text answered: the server speaks more than TLS")
	}
}

// TestRedisTLSClientCert: with RequireClientCert, a client that trusts the
// CA but presents no certificate is refused; with the client certificate
// it is answered. The server binds a Host of its own (127.0.0.2), which
// its certificate names.
func TestRedisTLSClientCert(t *testing.T) {
	testenv.Long(t, "starts a TLS redis-server")
	addr, files := testenv.RedisTLS(t, testenv.RedisTLSOptions{Host: "127.0.0.2", RequireClientCert: true})
	if !strings.HasPrefix(addr, "127.0.0.2:") {
		t.Fatalf("RedisTLS on %s, want 127.0.0.2", addr)
	}
	withCert, err := files.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(addr, withCert); err != nil {
		t.Errorf("PING with the client certificate: %v", err)
	}
	noCert, err := files.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(addr, noCert); err == nil {
		t.Error("PING without a client certificate answered, want refused")
	} else {
		t.Logf("without a client certificate: %v", err)
	}
}

// TestSentinelFailover: a go-redis FailoverClient writes a key (and it
// reaches the replica); the primary is killed; the sentinels name another
// node, which answers as master; the same client reads the key back and
// writes again; the old primary, started again, comes back as a replica.
func TestSentinelFailover(t *testing.T) {
	testenv.Long(t, "runs a Sentinel set through a failover")
	s := testenv.StartSentinel(t, testenv.SentinelOptions{Password: "s3cret"})
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: s.SentinelAddrs(), Password: s.Password})
	defer c.Close()
	if err := c.Set(ctx, "before", "v1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// The write reached the replica before the primary dies.
	if n, err := c.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 replica: %d, %v", n, err)
	}

	old := s.KillPrimary(t)
	began := time.Now()
	promoted, err := s.WaitFailover(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover %s -> %s in %s", old, promoted, time.Since(began).Round(time.Millisecond))
	if promoted == old {
		t.Fatalf("WaitFailover returned the old primary %s", old)
	}
	if got, err := s.Primary(ctx); err != nil || got != promoted {
		t.Errorf("Primary after failover: %s, %v; want %s", got, err, promoted)
	}

	// The client follows: it reads the key back and writes, within the
	// test's deadline.
	var v string
	for v, err = c.Get(ctx, "before").Result(); err != nil && ctx.Err() == nil; v, err = c.Get(ctx, "before").Result() {
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || v != "v1" {
		t.Fatalf("read back after failover: %q, %v", v, err)
	}
	if err := c.Set(ctx, "after", "v2", 0).Err(); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	t.Logf("client reads and writes again %s after the kill", time.Since(began).Round(time.Millisecond))

	s.Restart(t, old)
	oldNode := redis.NewClient(&redis.Options{Addr: old, Password: s.Password})
	defer oldNode.Close()
	role, err := oldNode.Do(ctx, "ROLE").Slice()
	if err != nil || len(role) < 2 || role[0] != "slave" || net.JoinHostPort(fmt.Sprint(role[1]), fmt.Sprint(role[2])) != promoted {
		t.Fatalf("ROLE of the restarted old primary: %v, %v; want slave of %s", role, err, promoted)
	}
	if v, err := oldNode.Get(ctx, "after").Result(); err != nil || v != "v2" {
		t.Errorf("the restarted node has %q, %v for the write after failover, want v2", v, err)
	}
	if err := oldNode.Set(ctx, "x", "y", 0).Err(); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Errorf("write on the restarted node: %v, want READONLY", err)
	}
}

// TestStartSentinelRefusesBadOptions: options that cannot make a Sentinel
// set are refused by name before anything starts.
func TestStartSentinelRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    testenv.SentinelOptions
		want string
	}{
		{testenv.SentinelOptions{Host: "localhost"}, "Host"},
		{testenv.SentinelOptions{Replicas: -1}, "Replicas"},
		{testenv.SentinelOptions{Sentinels: -2}, "Sentinels"},
		{testenv.SentinelOptions{MasterName: "a b"}, "MasterName"},
	} {
		msg := fatalOf(t, func(t testing.TB) { testenv.StartSentinel(t, tc.o) })
		if !strings.Contains(msg, tc.want) {
			t.Errorf("StartSentinel(%+v) failed with %q, want it naming %s", tc.o, msg, tc.want)
		}
	}
	for _, tc := range []struct {
		o    testenv.ClusterOptions
		want string
	}{
		{testenv.ClusterOptions{Masters: 2}, "Masters 2"},
		{testenv.ClusterOptions{ReplicasPerMaster: -1}, "ReplicasPerMaster"},
		{testenv.ClusterOptions{Host: "not-an-ip"}, "Host"},
	} {
		msg := fatalOf(t, func(t testing.TB) { testenv.StartCluster(t, tc.o) })
		if !strings.Contains(msg, tc.want) {
			t.Errorf("StartCluster(%+v) failed with %q, want it naming %s", tc.o, msg, tc.want)
		}
	}
}

// fatalRecorder is a testing.TB whose Fatal and Fatalf panic with the
// message (a fatalMsg), for fatalOf.
type fatalRecorder struct{ testing.TB }

type fatalMsg string

func (fatalRecorder) Fatalf(format string, args ...any) {
	panic(fatalMsg(fmt.Sprintf(format, args...)))
}
func (fatalRecorder) Fatal(args ...any) { panic(fatalMsg(fmt.Sprint(args...))) }

// fatalOf runs f and returns the message it failed with ("" if none).
func fatalOf(t testing.TB, f func(t testing.TB)) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			m, ok := r.(fatalMsg)
			if !ok {
				panic(r)
			}
			msg = string(m)
		}
	}()
	f(fatalRecorder{t})
	return ""
}

// TestCluster: a go-redis ClusterClient writes keys that land on
// different masters and reads them back; a transaction over two keys with
// one hash tag commits; one MULTI/EXEC whose command spans two slots is
// refused by the server with CROSSSLOT.
func TestCluster(t *testing.T) {
	testenv.Long(t, "runs a 3-node Redis Cluster")
	rc := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs(), Password: rc.Password})
	defer c.Close()

	slots := map[int64]bool{}
	for i := range 20 {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		slot, err := c.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot] = true
	}
	for i := range 20 {
		if v, err := c.Get(ctx, fmt.Sprintf("key-%d", i)).Int(); err != nil || v != i {
			t.Errorf("key-%d: %d, %v", i, v, err)
		}
	}
	var holding atomic.Int32
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		if n > 0 {
			holding.Add(1)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) < 2 || holding.Load() < 2 {
		t.Errorf("keys in %d slots on %d masters, want them spread", len(slots), holding.Load())
	}

	_, err = c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "{job}:a", "1", 0)
		p.Set(ctx, "{job}:b", "2", 0)
		return nil
	})
	if err != nil {
		t.Fatalf("MULTI/EXEC over one hash tag: %v", err)
	}
	_, err = c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.MSet(ctx, "{job}:c", "3", "{other}:d", "4")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("MULTI/EXEC over two slots: %v, want CROSSSLOT from the server", err)
	}
	if n, err := c.Exists(ctx, "{job}:c").Result(); err != nil || n != 0 {
		t.Errorf("the refused transaction wrote {job}:c: %d, %v", n, err)
	}
}
