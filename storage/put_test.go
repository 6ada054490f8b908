package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

// slowDownOnce answers the first PUT of an object as a distributed MinIO
// short of its write quorum does (503 SlowDownWrite), then lets every
// request through to the real store.
type slowDownOnce struct {
	next  http.RoundTripper
	puts  atomic.Int32
	fired atomic.Bool
}

func (s *slowDownOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/puts/a/") {
		s.puts.Add(1)
		if s.fired.CompareAndSwap(false, true) {
			if r.Body != nil {
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
			body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDownWrite</Code><Message>Resource requested is unwritable, please reduce your request rate</Message></Error>`
			return &http.Response{
				StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: r,
			}, nil
		}
	}
	return s.next.RoundTrip(r)
}

func TestPutOfAFileIsSentAgainWhenTheStoreAsksToSlowDown(t *testing.T) {
	stack := testenv.Services(t, testenv.ServicesOptions{AccessKey: "put-root", SecretKey: "put-root-secret"})
	fault := &slowDownOnce{}
	cfg := storage.Config{Endpoint: stack.MinioAddr, AccessKey: "put-root", SecretKey: "put-root-secret", Bucket: "puts",
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper { fault.next = rt; return fault }}
	st, err := storage.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("sandq output\n"), 5000)
	path := filepath.Join(t.TempDir(), "out.txt")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	obj, err := st.PutFile(ctx, "a/out.txt", path, storage.PutOptions{ContentType: "text/plain"})
	if err != nil {
		t.Fatalf("upload of a file after one SlowDownWrite: %v", err)
	}
	if n := fault.puts.Load(); n != 2 {
		t.Fatalf("PUTs sent: %d, want 2 (one refused, one sent again)", n)
	}
	want := sha256.Sum256(data)
	if obj.SHA256 != hex.EncodeToString(want[:]) || obj.Size != int64(len(data)) {
		t.Fatalf("stored %d bytes, sha256 %s; want %d, %x", obj.Size, obj.SHA256, len(data), want)
	}
	got := filepath.Join(t.TempDir(), "back")
	sum, err := st.Download(ctx, "a/out.txt", got, -1)
	if err != nil {
		t.Fatal(err)
	}
	if sum != obj.SHA256 {
		t.Fatalf("read back sha256 %s, uploaded %s", sum, obj.SHA256)
	}

	// A stream cannot be sent again: the same answer fails its upload,
	// which is why files are given to Put as files.
	fault.fired.Store(false)
	if _, err := st.Put(ctx, "a/stream.txt", io.MultiReader(bytes.NewReader(data)), int64(len(data)), storage.PutOptions{}); err == nil {
		t.Fatal("a streamed upload answered SlowDownWrite succeeded; the fault did not bite")
	}
}
