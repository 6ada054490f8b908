package s3compat

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

// storeCalls runs every call of storage.Store that sandq makes against
// srv, and checks what each returns: the S3 surface sandq depends on.
func storeCalls(t *testing.T, srv testenv.S3Server, bucket string) {
	ctx := context.Background()
	st, err := storage.New(storage.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Region: srv.Region, Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatalf("EnsureBucket: %v", err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatalf("EnsureBucket again: %v", err)
	}
	if days, err := st.PrefixExpiry(ctx, storage.ObjectPrefix); err != nil || days != 0 {
		t.Errorf("PrefixExpiry of a bucket without rules: %d, %v; want 0, nil", days, err)
	}
	if set, err := st.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 8); err != nil || !set {
		t.Errorf("EnsurePrefixExpiry: %v, %v; want it set", set, err)
	}
	if set, err := st.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 3); err != nil || set {
		t.Errorf("EnsurePrefixExpiry shorter: %v, %v; want the 8-day rule kept", set, err)
	}
	if days, err := st.PrefixExpiry(ctx, storage.ObjectPrefix); err != nil || days != 8 {
		t.Errorf("PrefixExpiry: %d, %v; want 8", days, err)
	}

	small := []byte("hello, s3\n")
	if _, err := st.Put(ctx, "jobs/x/small.txt", bytes.NewReader(small), int64(len(small)), storage.PutOptions{ContentType: "text/html"}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	// Of unknown size and over one part: a multipart upload.
	big := bytes.Repeat([]byte("0123456789abcdef"), 7<<20/16)
	obj, err := st.Put(ctx, "jobs/x/big.bin", io.MultiReader(bytes.NewReader(big)), -1, storage.PutOptions{})
	if err != nil || obj.Size != int64(len(big)) {
		t.Fatalf("streamed Put: %+v, %v", obj, err)
	}
	dst := filepath.Join(t.TempDir(), "big.bin")
	if _, err := st.Download(ctx, "jobs/x/big.bin", dst, -1); err != nil {
		t.Fatalf("Download: %v", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, big) {
		t.Errorf("Download: %d bytes differ from the %d put", len(got), len(big))
	}
	if _, err := st.Download(ctx, "jobs/x/big.bin", dst+".2", 1024); !errors.Is(err, storage.ErrTooLarge) {
		t.Errorf("Download over the cap: %v, want ErrTooLarge", err)
	}
	// A copy inside the store (--input-from): of a multipart object, byte
	// for byte; refused for a source of another size or none.
	if obj, err := st.Copy(ctx, "jobs/x/big.bin", "jobs/x/copy.bin", int64(len(big)), storage.PutOptions{}); err != nil || obj.Size != int64(len(big)) {
		t.Fatalf("Copy: %+v, %v", obj, err)
	}
	if _, err := st.Download(ctx, "jobs/x/copy.bin", dst+".copy", -1); err != nil {
		t.Fatalf("Download of the copy: %v", err)
	}
	if got, _ := os.ReadFile(dst + ".copy"); !bytes.Equal(got, big) {
		t.Errorf("Copy: %d bytes differ from the %d put", len(got), len(big))
	}
	if _, err := st.Copy(ctx, "jobs/x/small.txt", "jobs/x/wrong.txt", 3, storage.PutOptions{}); !errors.Is(err, storage.ErrSizeMismatch) {
		t.Errorf("Copy of a source of another size: %v, want ErrSizeMismatch", err)
	}
	if _, err := st.Copy(ctx, "jobs/x/missing", "jobs/x/wrong.txt", 3, storage.PutOptions{}); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Errorf("Copy of a missing key: %v, want ErrObjectNotExist", err)
	}
	if got, err := st.Read(ctx, "jobs/x/small.txt", 100); err != nil || !bytes.Equal(got, small) {
		t.Errorf("Read: %q, %v", got, err)
	}
	if _, err := st.Read(ctx, "jobs/x/missing", 100); !errors.Is(err, storage.ErrObjectNotExist) {
		t.Errorf("Read of a missing key: %v, want ErrObjectNotExist", err)
	}
	// The longest key sandq writes: 1024 bytes in segments of up to 255.
	long := "jobs/x/" + strings.Repeat(strings.Repeat("k", 254)+"/", 3)
	long += strings.Repeat("z", storage.MaxKeyBytes-len(long))
	if _, err := st.Put(ctx, long, bytes.NewReader(small), int64(len(small)), storage.PutOptions{}); err != nil {
		t.Errorf("Put of a %d-byte key: %v", len(long), err)
	}
	keys, err := st.List(ctx, "jobs/x/")
	slices.Sort(keys)
	if want := []string{"jobs/x/big.bin", "jobs/x/copy.bin", long, "jobs/x/small.txt"}; err != nil || !slices.Equal(keys, want) {
		t.Errorf("List: %q, %v; want %q", keys, err, want)
	}
	if up, err := st.ListIncomplete(ctx, "jobs/"); err != nil || len(up) != 0 {
		t.Errorf("ListIncomplete: %q, %v; want none", up, err)
	}

	link, err := st.Presign(ctx, "jobs/x/small.txt", time.Minute, storage.LinkOptions{Filename: "report é.txt", ContentType: "text/plain"})
	if err != nil {
		t.Fatal(err)
	}
	resp, body := testenv.Fetch(t, link.URL)
	if !bytes.Equal(body, small) {
		t.Errorf("presigned GET: %q", body)
	}
	if cd, want := resp.Header.Get("Content-Disposition"), storage.ContentDisposition("report é.txt"); cd != want {
		t.Errorf("presigned GET: Content-Disposition %q, want %q", cd, want)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("presigned GET: Content-Type %q, want the link's text/plain over the stored one", ct)
	}

	if err := st.RemovePrefix(ctx, "jobs/x/"); err != nil {
		t.Fatalf("RemovePrefix: %v", err)
	}
	if keys, err := st.List(ctx, "jobs/"); err != nil || len(keys) != 0 {
		t.Errorf("after RemovePrefix: %q, %v", keys, err)
	}
}

// TestStoreCallsOnSeaweedFS: every storage call sandq makes works on
// SeaweedFS as on MinIO.
func TestStoreCallsOnSeaweedFS(t *testing.T) {
	storeCalls(t, testenv.SeaweedFS(t, testenv.S3Options{}), "sandq-calls")
}

// TestStoreCallsOnDistributedMinio: and on a distributed MinIO with a node
// down.
func TestStoreCallsOnDistributedMinio(t *testing.T) {
	m := testenv.MinioDistributed(t, testenv.MinioSetOptions{})
	m.Kill(t, 3)
	storeCalls(t, m.Server(), "sandq-calls")
}
