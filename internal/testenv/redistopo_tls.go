package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// certValidity is how long the test certificates are valid (from an hour
// ago, against clock skew).
const certValidity = 24 * time.Hour

// TLSFiles are the PEM files of a TLS Redis: the CA that signed both
// certificates, the server's certificate and key, and a client
// certificate and key.
type TLSFiles struct{ CA, Cert, Key, ClientCert, ClientKey string }

// RedisTLSOptions say how to start a TLS Redis.
type RedisTLSOptions struct {
	// Host is the address it binds (DefaultRedisHost when empty); the
	// server certificate names it, 127.0.0.1 and localhost.
	Host string
	// RequireClientCert: clients must present a certificate the CA
	// signed (tls-auth-clients yes); otherwise none is asked for.
	RequireClientCert bool
	// Args are extra redis-server arguments ("--requirepass", "x").
	Args []string
}

// RedisTLS runs a redis-server that speaks TLS only (tls-port, port 0)
// for one test, with a CA, a server certificate and a client certificate
// made for it under t.TempDir(); it returns its address once it answers
// a TLS PING. Without redis-server the test is skipped under -short and
// fails otherwise.
func RedisTLS(t testing.TB, o RedisTLSOptions) (addr string, files TLSFiles) {
	t.Helper()
	NeedBinary(t, "redis-server")
	began := time.Now()
	host, err := redisHost(o.Host)
	if err != nil {
		t.Fatalf("RedisTLS: %v", err)
	}
	dir := t.TempDir()
	files, err = MakeTLSFiles(filepath.Join(dir, "tls"), host)
	if err != nil {
		t.Fatalf("RedisTLS: %v", err)
	}
	clientTLS, err := files.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	n := &redisNode{
		name: "tls", host: host, dir: filepath.Join(dir, "redis"),
		conf: func(n *redisNode) []string { return tlsConf(n, files, o.RequireClientCert) },
		args: o.Args,
		ready: func(ctx context.Context, n *redisNode) error {
			return redisAnswersWith(ctx, &redis.Options{Addr: n.addr(), TLSConfig: clientTLS})
		},
	}
	launch(t, n, false)
	logStart(t, "Redis TLS on "+n.addr(), began)
	return n.addr(), files
}

// tlsConf is baseConf with the plain port off and TLS on n's port.
func tlsConf(n *redisNode, f TLSFiles, requireClientCert bool) []string {
	conf := baseConf(n)
	conf[1] = "port 0"
	return append(conf,
		"tls-port "+fmt.Sprint(n.port),
		"tls-cert-file "+confQuote(f.Cert),
		"tls-key-file "+confQuote(f.Key),
		"tls-ca-cert-file "+confQuote(f.CA),
		"tls-auth-clients "+yesNo(requireClientCert),
	)
}

// ClientConfig is a client's TLS configuration for a server of f: it
// trusts f's CA, and presents f's client certificate when withCert.
func (f TLSFiles) ClientConfig(withCert bool) (*tls.Config, error) {
	ca, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", f.CA)
	}
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if withCert {
		cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// MakeTLSFiles writes a new CA, a server certificate for host, 127.0.0.1
// and localhost, and a client certificate (ECDSA P-256, each signed by
// the CA) into dir as PEM files.
func MakeTLSFiles(dir, host string) (TLSFiles, error) {
	f := TLSFiles{
		CA:   filepath.Join(dir, "ca.crt"),
		Cert: filepath.Join(dir, "server.crt"), Key: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	ca, caKey, err := newCert(&x509.Certificate{
		Subject: pkix.Name{CommonName: "sandq test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, nil)
	if err != nil {
		return f, err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	if ip := net.ParseIP(host); ip != nil && !ip.Equal(ips[0]) {
		ips = append(ips, ip)
	}
	server, serverKey, err := newCert(&x509.Certificate{
		Subject: pkix.Name{CommonName: "sandq test redis"}, DNSNames: []string{"localhost"}, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature,
		// Redis uses the server certificate for its own outgoing
		// connections too (replication), unless told another.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	if err != nil {
		return f, err
	}
	client, clientKey, err := newCert(&x509.Certificate{
		Subject: pkix.Name{CommonName: "sandq test client"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	if err != nil {
		return f, err
	}
	return f, errors.Join(
		writePEM(f.CA, "CERTIFICATE", ca.Raw),
		writePEM(f.Cert, "CERTIFICATE", server.Raw), writeKey(f.Key, serverKey),
		writePEM(f.ClientCert, "CERTIFICATE", client.Raw), writeKey(f.ClientKey, clientKey),
	)
}

// newCert makes a key and a certificate from tmpl, signed by parent's key
// (self-signed when parent is nil).
func newCert(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(certValidity)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("make certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
