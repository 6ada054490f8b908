package jobs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/testenv"
)

// writePEMPair writes a certificate and its key, returning their paths.
func writePEMPair(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	f, err := testenv.MakeTLSFiles(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return f.ClientCert, f.ClientKey
}

func TestRedisConnModes(t *testing.T) {
	cert, key := writePEMPair(t)
	cases := []struct {
		name string
		cfg  Config
		want asynq.RedisConnOpt // TLSConfig compared for presence only
		tls  bool
		desc string
	}{
		{"default", Config{}, asynq.RedisClientOpt{Addr: DefaultRedisAddr}, false, "redis at 127.0.0.1:6379"},
		{"addr fields", Config{RedisAddr: "10.0.0.1:6380", RedisUsername: "u", RedisPassword: "p", RedisDB: 3},
			asynq.RedisClientOpt{Addr: "10.0.0.1:6380", Username: "u", Password: "p", DB: 3}, false, "redis at 10.0.0.1:6380 db 3"},
		{"addr with CA file is TLS", Config{RedisAddr: "r:6380", RedisCAFile: cert}, asynq.RedisClientOpt{Addr: "r:6380"}, true, "redis at r:6380 (TLS)"},
		{"url", Config{RedisURL: "redis://u:secret@10.0.0.1:6379/2"}, asynq.RedisClientOpt{Addr: "10.0.0.1:6379", Username: "u", Password: "secret", DB: 2}, false, "redis at 10.0.0.1:6379 db 2"},
		{"url default port", Config{RedisURL: "redis://r"}, asynq.RedisClientOpt{Addr: "r:6379"}, false, "redis at r:6379"},
		{"url password from field", Config{RedisURL: "redis://r:1", RedisPassword: "p"}, asynq.RedisClientOpt{Addr: "r:1", Password: "p"}, false, "redis at r:1"},
		{"rediss with client cert", Config{RedisURL: "rediss://r:6380", RedisCAFile: cert, RedisCertFile: cert, RedisKeyFile: key}, asynq.RedisClientOpt{Addr: "r:6380"}, true, "redis at r:6380 (TLS)"},
		{"sentinel url", Config{RedisURL: "redis+sentinel://:pw@s1:26379,s2/sandq/1"},
			asynq.RedisFailoverClientOpt{MasterName: "sandq", SentinelAddrs: []string{"s1:26379", "s2:26379"}, Password: "pw", DB: 1}, false, "redis sentinel master sandq via s1:26379,s2:26379 db 1"},
		{"sentinel tls url", Config{RedisURL: "rediss+sentinel://s1:26379/m"}, asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"}}, true, "redis sentinel master m via s1:26379 (TLS)"},
		{"sentinel flags", Config{RedisSentinels: []string{"s1:1", "s2:2"}, RedisMasterName: "m", RedisSentinelPassword: "sp", RedisPassword: "p"},
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:1", "s2:2"}, SentinelPassword: "sp", Password: "p"}, false, "redis sentinel master m via s1:1,s2:2"},
		{"cluster url", Config{RedisURL: "redis+cluster://u:p@n1:7000,n2:7001"}, asynq.RedisClusterClientOpt{Addrs: []string{"n1:7000", "n2:7001"}, Username: "u", Password: "p"}, false, "redis cluster n1:7000,n2:7001"},
		{"cluster flags tls", Config{RedisCluster: []string{"n1:7000"}, RedisCAFile: cert}, asynq.RedisClusterClientOpt{Addrs: []string{"n1:7000"}}, true, "redis cluster n1:7000 (TLS)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg.WithDefaults()
			if err := cfg.validateRedis(); err != nil {
				t.Fatalf("validate: %v", err)
			}
			got, err := cfg.RedisConn()
			if err != nil {
				t.Fatal(err)
			}
			gotTLS := reflect.ValueOf(got).FieldByName("TLSConfig").Interface().(interface{}) != nil && !reflect.ValueOf(got).FieldByName("TLSConfig").IsNil()
			if gotTLS != tc.tls {
				t.Errorf("TLS = %v, want %v", gotTLS, tc.tls)
			}
			stripped := reflect.New(reflect.TypeOf(got)).Elem()
			stripped.Set(reflect.ValueOf(got))
			stripped.FieldByName("TLSConfig").Set(reflect.Zero(stripped.FieldByName("TLSConfig").Type()))
			if !reflect.DeepEqual(stripped.Interface(), tc.want) {
				t.Errorf("RedisConn() = %+v, want %+v", stripped.Interface(), tc.want)
			}
			if d := cfg.RedisDescription(); d != tc.desc {
				t.Errorf("description %q, want %q", d, tc.desc)
			}
			if strings.Contains(cfg.RedisDescription(), "secret") {
				t.Errorf("description %q shows the password", cfg.RedisDescription())
			}
			rdb, err := cfg.NewRedisClient()
			if err != nil {
				t.Fatal(err)
			}
			defer rdb.Close()
			_, isCluster := rdb.(*redis.ClusterClient)
			if isCluster != (cfg.RedisMode() == RedisCluster) {
				t.Errorf("client %T for mode %s", rdb, cfg.RedisMode())
			}
		})
	}
}

func TestRedisConnRefusals(t *testing.T) {
	cert, key := writePEMPair(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"url and cluster", Config{RedisURL: "redis://r:1", RedisCluster: []string{"n:1"}}, "redis: redis URL and redis cluster each name the Redis: give only one"},
		{"url and addr", Config{RedisURL: "redis://r:1", RedisAddr: "r:2"}, "redis: redis URL and redis address each name the Redis: give only one"},
		{"sentinels and cluster", Config{RedisSentinels: []string{"s:1"}, RedisMasterName: "m", RedisCluster: []string{"n:1"}}, "redis: redis sentinels and redis cluster each name the Redis"},
		{"sentinels without master", Config{RedisSentinels: []string{"s:1"}}, "redis sentinels: no master name"},
		{"master without sentinels", Config{RedisMasterName: "m"}, "redis master name: only with redis sentinels"},
		{"sentinel url without master", Config{RedisURL: "redis+sentinel://s:1"}, "redis URL: a redis+sentinel:// URL names the master after the hosts"},
		{"cluster db", Config{RedisCluster: []string{"n:1"}, RedisDB: 2}, "redis cluster: database 2: a Redis Cluster has database 0 only"},
		{"cluster url db", Config{RedisURL: "redis+cluster://n:1/3"}, "redis cluster: database 3"},
		{"unknown scheme", Config{RedisURL: "http://r:1"}, `redis URL: unknown scheme "http"`},
		{"bad port", Config{RedisAddr: "r:99999"}, `redis address: "r:99999": port "99999" is not a number from 1 to 65535`},
		{"bad url port", Config{RedisURL: "redis://r:0"}, `redis URL: "r:0": port "0" is not a number from 1 to 65535`},
		{"addr without port", Config{RedisAddr: "r"}, `redis address: "r" is not host:port`},
		{"cluster bad port", Config{RedisCluster: []string{"n:x"}}, `redis cluster: "n:x": port "x" is not a number`},
		{"several hosts plain url", Config{RedisURL: "redis://a:1,b:2"}, "redis URL: several hosts need redis+sentinel:// or redis+cluster://"},
		{"url db not a number", Config{RedisURL: "redis://r:1/x"}, `redis URL: database "x" is not a number`},
		{"url path too long", Config{RedisURL: "redis+sentinel://s:1/m/1/2"}, "redis URL: path /1/2: want at most a database number"},
		{"url query", Config{RedisURL: "redis://r:1?dial_timeout=1s"}, "redis URL: query parameters and fragments are not supported"},
		{"password both ways", Config{RedisURL: "redis://:a@r:1", RedisPassword: "b"}, "redis password is given both in the redis URL and on its own, differently"},
		{"db both ways", Config{RedisURL: "redis://r:1/1", RedisDB: 2}, "redis database is given both in the redis URL and on its own, differently"},
		{"db range", Config{RedisDB: -1}, "redis database -1: must be between 0 and 65535"},
		{"unreadable CA", Config{RedisCAFile: filepath.Join(dir, "missing.pem")}, "redis CA file: open "},
		{"CA not PEM", Config{RedisCAFile: notPEM}, "redis CA file " + notPEM + ": no PEM certificate in it"},
		{"cert without key", Config{RedisCertFile: cert}, "redis TLS: --redis-cert-file and --redis-key-file go together"},
		{"key without cert", Config{RedisKeyFile: key}, "redis TLS: --redis-cert-file and --redis-key-file go together"},
		{"bad client cert", Config{RedisCertFile: notPEM, RedisKeyFile: key}, "redis client certificate (" + notPEM},
		{"TLS files with plain url", Config{RedisURL: "redis://r:1", RedisCAFile: cert}, "redis TLS files are given with a plain redis URL: use the rediss:// form"},
		{"negative wait", Config{RedisWaitReplicas: -1}, "redis wait replicas -1: must not be negative"},
		{"negative wait timeout", Config{RedisWaitReplicas: 1, RedisWaitTimeout: -time.Second}, "redis wait timeout -1s: must not be negative"},
		{"wait in cluster", Config{RedisCluster: []string{"n:1"}, RedisWaitReplicas: 1}, "redis wait replicas: not supported with Redis Cluster"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg.WithDefaults()
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
			if _, cerr := cfg.NewRedisClient(); cerr == nil && !strings.Contains(tc.name, "wait") {
				t.Errorf("NewRedisClient accepted what Validate refuses")
			}
		})
	}
}

// TestRedisURLErrorHidesPassword checks that a URL that does not parse is
// not repeated in the error, password and all.
func TestRedisURLErrorHidesPassword(t *testing.T) {
	for _, u := range []string{
		"redis://u:hunter2@r:1/%zz",
		// Passwords with an unencoded "/" (base64 makes them).
		"redis://u:hunt/er2@r:x/0",
		"redis+sentinel://u:hunt/er2@s1,s2:x/m",
		"redis://u:hunt/er2@r:6379/0/1",
	} {
		err := Config{RedisURL: u}.Validate()
		if err == nil || strings.Contains(err.Error(), "hunt") {
			t.Errorf("%s: error %v: want one that does not show the password", u, err)
		}
	}
	// And a password with a "/" is read whole.
	tgt, err := parseRedisURL("redis://u:ab/cd@r:6379/2")
	if err != nil || tgt.password != "ab/cd" || tgt.addrs[0] != "r:6379" || tgt.db != 2 {
		t.Errorf("password with a slash: %+v, %v", tgt, err)
	}
	if tgt, err := parseRedisURL("redis://[::1]/0"); err != nil || tgt.addrs[0] != "[::1]:6379" {
		t.Errorf("IPv6 without a port: %+v, %v; want the default port", tgt, err)
	}
}

// TestNeverSent: an enqueue that failed to connect sent nothing, so its
// uploads can go; one that failed after connecting may have been taken.
func TestNeverSent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w: %w", ErrRedisUnavailable, errors.New("UNKNOWN: redis eval error: dial tcp 127.0.0.1:44901: connect: connection refused")), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{errors.New("redis: all sentinels specified in configuration are unreachable"), true},
		{&net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, false},
		{errors.New("UNKNOWN: redis eval error: read tcp 127.0.0.1:5->127.0.0.1:6379: i/o timeout"), false},
		{errors.New("UNKNOWN: redis eval error: EOF"), false},
	} {
		if got := neverSent(tc.err); got != tc.want {
			t.Errorf("neverSent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRedisFailureLeavesCallerErrors: a caller that gave up is not a
// Redis outage (no 503, no "unavailable" metric); a text-only asynq
// error is.
func TestRedisFailureLeavesCallerErrors(t *testing.T) {
	for _, err := range []error{context.Canceled, fmt.Errorf("enqueue: %w", context.DeadlineExceeded), asynq.ErrTaskNotFound} {
		if got := redisFailure(err); errors.Is(got, ErrRedisUnavailable) {
			t.Errorf("redisFailure(%v) = %v: marked as Redis unavailable", err, got)
		}
	}
	if got := redisFailure(errors.New("UNKNOWN: redis eval error: EOF")); !errors.Is(got, ErrRedisUnavailable) {
		t.Errorf("a Redis error is not marked unavailable: %v", got)
	}
}
