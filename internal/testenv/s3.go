package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Server is an S3 endpoint a test runs against: host:port (plain HTTP),
// the credentials of its administrator (they may create buckets and set
// their lifecycle), and the region to sign for.
type S3Server struct {
	Endpoint, AccessKey, SecretKey, Region string
}

// S3Region is the region the S3 servers of testenv are signed for.
const S3Region = "us-east-1"

// DefaultS3Host is the address the S3 servers bind to unless told.
const DefaultS3Host = "127.0.0.1"

// s3ReadyTimeout is how long a started S3 server gets to answer.
const s3ReadyTimeout = 90 * time.Second

// s3PollInterval is how often readiness is polled.
const s3PollInterval = 100 * time.Millisecond

// Client is a minio-go client of the server with its administrator's
// credentials, for tests that check what the server holds.
func (s S3Server) Client() (*minio.Client, error) {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", s.Endpoint, err)
	}
	return c, nil
}

// answers reports whether the server answers a signed request (ListBuckets)
// with these credentials.
func (s S3Server) answers(ctx context.Context) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.ListBuckets(ctx); err != nil {
		return fmt.Errorf("s3 at %s: %w", s.Endpoint, err)
	}
	return nil
}

// readyProbeBucket is the bucket takesWrite writes to and removes.
const readyProbeBucket = "sandq-ready-probe"

// takesWrite writes an object to a bucket of its own and removes both.
func (s S3Server) takesWrite(ctx context.Context) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, readyProbeBucket, minio.MakeBucketOptions{}); err != nil && minio.ToErrorResponse(err).Code != "BucketAlreadyOwnedByYou" {
		return fmt.Errorf("s3 at %s: make bucket: %w", s.Endpoint, err)
	}
	if _, err := c.PutObject(ctx, readyProbeBucket, "probe", strings.NewReader("ok"), 2, minio.PutObjectOptions{}); err != nil {
		return fmt.Errorf("s3 at %s: put: %w", s.Endpoint, err)
	}
	if err := c.RemoveObject(ctx, readyProbeBucket, "probe", minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("s3 at %s: remove: %w", s.Endpoint, err)
	}
	if err := c.RemoveBucket(ctx, readyProbeBucket); err != nil {
		return fmt.Errorf("s3 at %s: remove bucket: %w", s.Endpoint, err)
	}
	return nil
}

// waitUntil polls check until it returns nil, p exits, or d passes; the
// error names what and holds p's output.
func waitUntil(p *Process, what string, d time.Duration, check func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("%s: %s exited (%v) before it was ready:\n%s", what, p.Cmd.Path, p.Err(), tail(p.Output()))
		case <-time.After(s3PollInterval):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w\n%s", what, d, err, tail(p.Output()))
		}
	}
}

// tail is the end of a process's output, for errors.
func tail(out string) string {
	const max = 4000
	if len(out) > max {
		return "..." + out[len(out)-max:]
	}
	return out
}

// FreePortOn is a TCP port on host that nothing listened on a moment ago.
func FreePortOn(t testing.TB, host string) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatalf("a free port on %s: %v", host, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatalf("no free port on %s that this test process was not given already", host)
	return 0
}

// hostPort is host:port.
func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// randomSecret is a random secret key of 40 hex digits.
func randomSecret(t testing.TB) string {
	t.Helper()
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
