package jobs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// How sandq reaches Redis. One of four ways names the Redis, and only one
// may be given:
//
//   - RedisAddr (with RedisUsername, RedisPassword, RedisDB): one server;
//   - RedisURL: redis://, rediss:// (TLS), redis+sentinel://,
//     rediss+sentinel://, redis+cluster:// or rediss+cluster://;
//   - RedisSentinels and RedisMasterName: a Sentinel-managed primary;
//   - RedisCluster: the seed nodes of a Redis Cluster.
//
// TLS is on with a rediss* URL or when RedisCAFile or RedisCertFile is
// given; RedisCAFile replaces the system roots, RedisCertFile and
// RedisKeyFile are a client certificate. Username, password and database
// may come from the URL or from their own fields (a password kept out of
// the URL), not from both with different values.

// RedisMode is how sandq reaches Redis.
type RedisMode string

// Redis modes.
const (
	RedisSingle   RedisMode = "single"
	RedisSentinel RedisMode = "sentinel"
	RedisCluster  RedisMode = "cluster"
)

// URL schemes of RedisURL.
const (
	schemeRedis           = "redis"
	schemeRedisTLS        = "rediss"
	schemeSentinel        = "redis+sentinel"
	schemeSentinelTLS     = "rediss+sentinel"
	schemeCluster         = "redis+cluster"
	schemeClusterTLS      = "rediss+cluster"
	redisDefaultPort      = "6379"
	sentinelDefaultPort   = "26379"
	redisMaxDB            = 1 << 16
	redisURLSchemesForErr = "redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
)

// ErrRedisUnavailable marks a failure of Redis itself (unreachable, or
// failing over): worth a retry. asynq reports those as text only; jobs
// marks them (redisFailure) for callers such as the API to tell them from
// a job not found.
var ErrRedisUnavailable = errors.New("redis is unavailable")

// redisFailure marks an error of asynq's that is none of its named
// outcomes (task or queue not found, ID taken) as ErrRedisUnavailable.
func redisFailure(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrRedisUnavailable),
		errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound),
		errors.Is(err, asynq.ErrTaskIDConflict), errors.Is(err, asynq.ErrDuplicateTask),
		// The caller gave up (a client gone): not Redis's failure.
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: %w", ErrRedisUnavailable, err)
}

// redisTarget is the Redis a Config names, resolved from whichever way it
// was given.
type redisTarget struct {
	mode               RedisMode
	addrs              []string // one server, the sentinels, or the cluster's seeds
	master             string
	username, password string
	db                 int
	tls                bool
}

// RedisMode reports how the config reaches Redis (after Validate).
func (c Config) RedisMode() RedisMode {
	t, err := c.redisTarget()
	if err != nil {
		return RedisSingle
	}
	return t.mode
}

// RedisConn is asynq's connection option for this config: a
// RedisClientOpt, RedisFailoverClientOpt or RedisClusterClientOpt, with
// TLS when configured.
func (c Config) RedisConn() (asynq.RedisConnOpt, error) {
	t, err := c.redisTarget()
	if err != nil {
		return nil, err
	}
	var tc *tls.Config
	if t.tls {
		if tc, err = c.redisTLSConfig(); err != nil {
			return nil, err
		}
	}
	switch t.mode {
	case RedisSentinel:
		return asynq.RedisFailoverClientOpt{
			MasterName: t.master, SentinelAddrs: t.addrs,
			SentinelUsername: c.RedisSentinelUsername, SentinelPassword: c.RedisSentinelPassword,
			Username: t.username, Password: t.password, DB: t.db, TLSConfig: tc,
		}, nil
	case RedisCluster:
		return asynq.RedisClusterClientOpt{Addrs: t.addrs, Username: t.username, Password: t.password, TLSConfig: tc}, nil
	}
	return asynq.RedisClientOpt{Addr: t.addrs[0], Username: t.username, Password: t.password, DB: t.db, TLSConfig: tc}, nil
}

// NewRedisClient connects (lazily) to the configured Redis: a
// *redis.Client, a Sentinel failover *redis.Client or a
// *redis.ClusterClient.
func (c Config) NewRedisClient() (redis.UniversalClient, error) {
	opt, err := c.RedisConn()
	if err != nil {
		return nil, err
	}
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("redis client: unexpected type")
	}
	return rdb, nil
}

// RedisDescription names the configured Redis without credentials, for
// messages: "redis at 10.0.0.1:6379", "redis sentinel master sandq via
// h1:26379,h2:26379", "redis cluster h1:7000,h2:7000" (with "(TLS)" when
// so).
func (c Config) RedisDescription() string {
	t, err := c.redisTarget()
	if err != nil {
		return "redis (misconfigured: " + err.Error() + ")"
	}
	var s string
	switch t.mode {
	case RedisSentinel:
		s = fmt.Sprintf("redis sentinel master %s via %s", t.master, strings.Join(t.addrs, ","))
	case RedisCluster:
		s = "redis cluster " + strings.Join(t.addrs, ",")
	default:
		s = "redis at " + t.addrs[0]
	}
	if t.db != 0 {
		s += fmt.Sprintf(" db %d", t.db)
	}
	if t.tls {
		s += " (TLS)"
	}
	return s
}

// validateRedis checks the Redis settings: one way of naming the Redis,
// well-formed addresses, readable TLS files, a usable replica wait.
func (c Config) validateRedis() error {
	t, err := c.redisTarget()
	if err != nil {
		return err
	}
	if t.tls {
		if _, err := c.redisTLSConfig(); err != nil {
			return err
		}
	}
	switch {
	case c.RedisWaitReplicas < 0:
		return fmt.Errorf("redis wait replicas %d: must not be negative", c.RedisWaitReplicas)
	case c.RedisWaitTimeout < 0:
		return fmt.Errorf("redis wait timeout %s: must not be negative", c.RedisWaitTimeout)
	case c.RedisWaitReplicas > 0 && t.mode == RedisCluster:
		return errors.New("redis wait replicas: not supported with Redis Cluster (a job's keys live on several primaries); use Sentinel or a single primary with replicas, or set it to 0")
	}
	return nil
}

// redisTarget resolves the Redis the config names.
func (c Config) redisTarget() (redisTarget, error) {
	given := c.redisWays()
	if len(given) > 1 {
		return redisTarget{}, fmt.Errorf("redis: %s each name the Redis: give only one", strings.Join(given, " and "))
	}
	var (
		t   redisTarget
		err error
	)
	switch {
	case c.RedisURL != "":
		t, err = parseRedisURL(c.RedisURL)
	case len(c.RedisSentinels) > 0:
		t.mode = RedisSentinel
		t.addrs, err = checkAddrs("redis sentinels", c.RedisSentinels, sentinelDefaultPort)
		t.master = c.RedisMasterName
	case len(c.RedisCluster) > 0:
		t.mode = RedisCluster
		t.addrs, err = checkAddrs("redis cluster", c.RedisCluster, redisDefaultPort)
	default:
		t.mode = RedisSingle
		addr := c.RedisAddr
		if addr == "" {
			addr = DefaultRedisAddr
		}
		t.addrs, err = checkAddrs("redis address", []string{addr}, "")
	}
	if err != nil {
		return t, err
	}
	if c.RedisURL == "" {
		t.tls = c.usesRedisTLS()
	}
	if err := c.mergeRedisAuth(&t); err != nil {
		return t, err
	}
	return t, c.checkTarget(t)
}

// redisWays lists the settings given that each name a Redis.
func (c Config) redisWays() []string {
	var given []string
	if c.RedisURL != "" {
		given = append(given, "redis URL")
	}
	if c.RedisAddr != "" && (c.RedisURL != "" || len(c.RedisSentinels) > 0 || len(c.RedisCluster) > 0) {
		given = append(given, "redis address")
	}
	if len(c.RedisSentinels) > 0 {
		given = append(given, "redis sentinels")
	}
	if len(c.RedisCluster) > 0 {
		given = append(given, "redis cluster")
	}
	return given
}

// mergeRedisAuth fills what the URL left out from the fields, refusing a
// value given both ways differently.
func (c Config) mergeRedisAuth(t *redisTarget) error {
	pick := func(name string, fromURL *string, field string) error {
		if field == "" {
			return nil
		}
		if *fromURL != "" && *fromURL != field {
			return fmt.Errorf("redis %s is given both in the redis URL and on its own, differently: give it once", name)
		}
		*fromURL = field
		return nil
	}
	if err := pick("username", &t.username, c.RedisUsername); err != nil {
		return err
	}
	if err := pick("password", &t.password, c.RedisPassword); err != nil {
		return err
	}
	if c.RedisDB != 0 {
		if t.db != 0 && t.db != c.RedisDB {
			return errors.New("redis database is given both in the redis URL and on its own, differently: give it once")
		}
		t.db = c.RedisDB
	}
	return nil
}

// checkTarget checks what holds across modes: master name with sentinels
// only, database 0 in a cluster, TLS files consistent with the URL.
func (c Config) checkTarget(t redisTarget) error {
	switch {
	case t.mode == RedisSentinel && t.master == "":
		return errors.New("redis sentinels: no master name (--redis-master-name, or the path of a redis+sentinel:// URL)")
	case t.mode != RedisSentinel && c.RedisMasterName != "":
		return errors.New("redis master name: only with redis sentinels (--redis-sentinels or a redis+sentinel:// URL)")
	case t.mode == RedisCluster && t.db != 0:
		return fmt.Errorf("redis cluster: database %d: a Redis Cluster has database 0 only", t.db)
	case t.db < 0 || t.db >= redisMaxDB:
		return fmt.Errorf("redis database %d: must be between 0 and %d", t.db, redisMaxDB-1)
	case (c.RedisCertFile == "") != (c.RedisKeyFile == ""):
		return errors.New("redis TLS: --redis-cert-file and --redis-key-file go together (client certificate and its key)")
	}
	tlsFiles := c.RedisCAFile != "" || c.RedisCertFile != ""
	if c.RedisURL != "" && tlsFiles && !t.tls {
		return errors.New("redis TLS files are given with a plain redis URL: use the rediss:// form of the scheme for TLS")
	}
	return nil
}

// usesRedisTLS reports whether the non-URL forms turn TLS on.
func (c Config) usesRedisTLS() bool { return c.RedisCAFile != "" || c.RedisCertFile != "" }

// redisTLSConfig is the TLS configuration from the CA and client
// certificate files (system roots without a CA file).
func (c Config) redisTLSConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.RedisCAFile != "" {
		pem, err := os.ReadFile(c.RedisCAFile)
		if err != nil {
			return nil, fmt.Errorf("redis CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis CA file %s: no PEM certificate in it", c.RedisCAFile)
		}
		tc.RootCAs = pool
	}
	if c.RedisCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.RedisCertFile, c.RedisKeyFile)
		if err != nil {
			return nil, fmt.Errorf("redis client certificate (%s, %s): %w", c.RedisCertFile, c.RedisKeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// parseRedisURL reads the forms of RedisURL. It splits the URL itself:
// net/url refuses several host:port in one URL.
func parseRedisURL(s string) (redisTarget, error) {
	var t redisTarget
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return t, errors.New("redis URL: not a URL (want " + redisURLSchemesForErr + ")")
	}
	switch scheme {
	case schemeRedis, schemeRedisTLS:
		t.mode = RedisSingle
	case schemeSentinel, schemeSentinelTLS:
		t.mode = RedisSentinel
	case schemeCluster, schemeClusterTLS:
		t.mode = RedisCluster
	default:
		return t, fmt.Errorf("redis URL: unknown scheme %q (want %s)", scheme, redisURLSchemesForErr)
	}
	t.tls = strings.HasPrefix(scheme, schemeRedisTLS)
	// The user information ends at the last "@", wherever a "/" is: a
	// password left unencoded must not spill into the host, or a message.
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		if err := parseUserInfo(&t, rest[:i]); err != nil {
			return t, err
		}
		rest = rest[i+1:]
	}
	if strings.ContainsAny(rest, "?#") {
		return t, errors.New("redis URL: query parameters and fragments are not supported; use the flags")
	}
	authority, rawPath, _ := strings.Cut(rest, "/")
	if authority == "" {
		return t, errors.New("redis URL: no host")
	}
	var path []string
	if rawPath = strings.Trim(rawPath, "/"); rawPath != "" {
		path = strings.Split(rawPath, "/")
	}
	hosts := strings.Split(authority, ",")
	var err error
	switch t.mode {
	case RedisSingle:
		if len(hosts) > 1 {
			return t, errors.New("redis URL: several hosts need redis+sentinel:// or redis+cluster://")
		}
		t.addrs, err = checkAddrs("redis URL", hosts, redisDefaultPort)
	case RedisSentinel:
		t.addrs, err = checkAddrs("redis URL", hosts, sentinelDefaultPort)
		if err == nil && len(path) == 0 {
			return t, errors.New("redis URL: a redis+sentinel:// URL names the master after the hosts: redis+sentinel://h1:26379,h2:26379/MASTER[/DB]")
		}
		if err == nil {
			t.master, path = path[0], path[1:]
		}
	case RedisCluster:
		t.addrs, err = checkAddrs("redis URL", hosts, redisDefaultPort)
	}
	if err != nil {
		return t, err
	}
	return t, parseURLDB(&t, path)
}

// parseUserInfo reads a URL's user[:password], percent-encoded.
func parseUserInfo(t *redisTarget, info string) error {
	user, pass, _ := strings.Cut(info, ":")
	var err1, err2 error
	t.username, err1 = url.PathUnescape(user)
	t.password, err2 = url.PathUnescape(pass)
	if err1 != nil || err2 != nil {
		// The error would repeat the password.
		return errors.New("redis URL: user or password is not properly percent-encoded")
	}
	return nil
}

// parseURLDB reads the database number left in a URL's path.
func parseURLDB(t *redisTarget, path []string) error {
	switch {
	case len(path) == 0:
		return nil
	case len(path) > 1:
		return fmt.Errorf("redis URL: path /%s: want at most a database number", strings.Join(path, "/"))
	}
	n, err := strconv.Atoi(path[0])
	if err != nil {
		return fmt.Errorf("redis URL: database %q is not a number", path[0])
	}
	t.db = n
	return nil
}

// checkAddrs checks host:port addresses, adding defaultPort to those
// without one (when defaultPort is not empty).
func checkAddrs(what string, addrs []string, defaultPort string) ([]string, error) {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("%s: empty address", what)
		}
		host, port, err := net.SplitHostPort(a)
		bracketed := strings.HasPrefix(a, "[") && strings.HasSuffix(a, "]") // an IPv6 address alone
		if err != nil && defaultPort != "" && (bracketed || !strings.Contains(a, ":")) {
			host, port, err = strings.Trim(a, "[]"), defaultPort, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not host:port", what, a)
		}
		if host == "" {
			return nil, fmt.Errorf("%s: %q has no host", what, a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%s: %q: port %q is not a number from 1 to 65535", what, a, port)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	return out, nil
}
