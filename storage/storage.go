// Package storage keeps job inputs, outputs and logs in an S3-compatible
// object store and hands out presigned links to them. It makes only plain
// S3 calls (no MinIO extension or admin API), so any S3 store serves:
// MinIO, single or distributed, SeaweedFS and AWS S3 are tested or
// documented (test/s3compat).
//
// Callers never see minio-go types or errors: missing objects and buckets are
// reported as ErrObjectNotExist and ErrBucketNotExist, keys the store refuses
// as ErrInvalidKey. Every object is stored and linked as a download (see
// PutOptions and LinkOptions).
package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// ErrObjectNotExist is returned when an object is not in the bucket.
var ErrObjectNotExist = errors.New("object does not exist")

// ErrBucketNotExist is returned when the configured bucket is missing.
var ErrBucketNotExist = errors.New("bucket does not exist")

// ErrTooLarge is returned by Download when an object exceeds the size allowed.
var ErrTooLarge = errors.New("object larger than allowed")

// MaxLinkExpiry is the longest a presigned link may live (an S3 SigV4 limit).
const MaxLinkExpiry = 7 * 24 * time.Hour

// Config locates the object store.
type Config struct {
	// Endpoint is host:port of the S3 API as this process reaches it.
	Endpoint string
	// PublicEndpoint is host:port written into presigned links; defaults to
	// Endpoint. Set it when producers reach the store under another name.
	PublicEndpoint string
	// PublicSecure makes presigned links https; defaults to Secure.
	PublicSecure *bool
	AccessKey    string
	SecretKey    string
	Bucket       string
	// Region is sent with every request; setting it avoids a bucket
	// location lookup before each presign. Default us-east-1.
	Region string
	Secure bool
	// WrapTransport, if set, wraps the HTTP transport of the store's
	// requests (the control-plane bench counts them with it).
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// DefaultRegion is Config.Region's default.
const DefaultRegion = "us-east-1"

// WithDefaults returns a copy with unset fields defaulted.
func (c Config) WithDefaults() Config {
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.PublicEndpoint == "" {
		c.PublicEndpoint = c.Endpoint
	}
	if c.PublicSecure == nil {
		s := c.Secure
		c.PublicSecure = &s
	}
	return c
}

// Validate names the first missing or bad field.
func (c Config) Validate() error {
	switch {
	case c.Endpoint == "":
		return errors.New("s3 endpoint is empty")
	case strings.Contains(c.Endpoint, "/"):
		return fmt.Errorf("s3 endpoint %q must be host:port, without scheme or path", c.Endpoint)
	case strings.Contains(c.PublicEndpoint, "/"):
		return fmt.Errorf("s3 public endpoint %q must be host:port, without scheme or path", c.PublicEndpoint)
	case c.AccessKey == "" || c.SecretKey == "":
		return errors.New("s3 access key and secret key are required")
	case c.Bucket == "":
		return errors.New("s3 bucket is empty")
	}
	return nil
}

// Store is a bucket in an object store.
type Store struct {
	client  *minio.Client
	presign *minio.Client
	bucket  string
}

// New connects lazily (no request is made until the first call).
func New(cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	creds := credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	transport, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("s3 transport: %w", err)
	}
	transport.MaxIdleConnsPerHost = 64
	var rt http.RoundTripper = transport
	if cfg.WrapTransport != nil {
		rt = cfg.WrapTransport(rt)
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{Creds: creds, Secure: cfg.Secure, Region: cfg.Region, Transport: rt})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", cfg.Endpoint, err)
	}
	presign := client
	if cfg.PublicEndpoint != cfg.Endpoint || *cfg.PublicSecure != cfg.Secure {
		// Presigning is computed locally when the region is known, so this
		// client never needs to reach the public endpoint.
		presign, err = minio.New(cfg.PublicEndpoint, &minio.Options{Creds: creds, Secure: *cfg.PublicSecure, Region: cfg.Region})
		if err != nil {
			return nil, fmt.Errorf("s3 client for public endpoint %s: %w", cfg.PublicEndpoint, err)
		}
	}
	return &Store{client: client, presign: presign, bucket: cfg.Bucket}, nil
}

// EnsureBucket creates the bucket if it is missing.
func (s *Store) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("check bucket %s: %w", s.bucket, convert(err))
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{}); err != nil {
		if r := minio.ToErrorResponse(err); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
			return nil
		}
		return fmt.Errorf("create bucket %s: %w", s.bucket, convert(err))
	}
	return nil
}

// Object describes a stored object.
type Object struct {
	Key         string
	Size        int64
	SHA256      string
	ContentType string
}

// streamPartSize is the part size of uploads of unknown length: minio-go
// holds one part in memory per upload, so this bounds an upload's memory.
// 5 MiB is S3's minimum part size; 10000 parts make 50 GB at most.
const streamPartSize = 5 << 20

// Put stores size bytes from r under key and returns their sha256. A size
// of -1 streams r to its end in parts of streamPartSize. The object is
// stored as a download (see PutOptions). A key the store would not accept
// is refused with ErrInvalidKey before any request.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, po PutOptions) (Object, error) {
	if err := checkKey(key); err != nil {
		return Object{}, fmt.Errorf("upload: %w", err)
	}
	contentType := SafeContentType(po.ContentType)
	h := sha256.New()
	opts := minio.PutObjectOptions{ContentType: contentType, ContentDisposition: ContentDisposition(filenameOf(po.Filename, key))}
	if size < 0 {
		opts.PartSize = streamPartSize
	}
	body := io.TeeReader(r, h)
	if rs, ok := r.(io.ReadSeeker); ok && size >= 0 {
		// A body minio-go can seek back to start is sent again when the
		// store answers a retryable error (a distributed MinIO short of
		// its write quorum for a moment answers SlowDownWrite); a teed
		// stream would fail the upload on the first such answer. The
		// hash is taken in a pass of its own, then.
		sum, err := hashSection(rs, size)
		if err != nil {
			return Object{}, fmt.Errorf("upload %s: %w", key, err)
		}
		h, body = sum, rs
	}
	info, err := s.client.PutObject(ctx, s.bucket, key, body, size, opts)
	if err != nil {
		return Object{}, fmt.Errorf("upload %s: %w", key, convert(err))
	}
	if size >= 0 && info.Size != size {
		return Object{}, fmt.Errorf("upload %s: stored %d bytes, expected %d", key, info.Size, size)
	}
	return Object{Key: key, Size: info.Size, SHA256: hex.EncodeToString(h.Sum(nil)), ContentType: contentType}, nil
}

// hashSection hashes the next size bytes of rs and seeks back to where
// they began.
func hashSection(rs io.ReadSeeker, size int64) (hash.Hash, error) {
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	n, err := io.CopyN(h, rs, size)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if n != size {
		return nil, fmt.Errorf("read %d bytes, expected %d", n, size)
	}
	if _, err := rs.Seek(start, io.SeekStart); err != nil {
		return nil, err
	}
	return h, nil
}

// PutFile stores the file at path under key.
func (s *Store) PutFile(ctx context.Context, key, path string, opts PutOptions) (Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return Object{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Object{}, err
	}
	return s.Put(ctx, key, f, st.Size(), opts)
}

// Download writes the object at key to a new file at dst (which must not
// exist), refusing objects larger than maxSize bytes (maxSize < 0: no cap).
// It returns the sha256 of what was written.
func (s *Store) Download(ctx context.Context, key, dst string, maxSize int64) (string, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return "", fmt.Errorf("download %s: %w", key, convert(err))
	}
	defer obj.Close()
	st, err := obj.Stat()
	if err != nil {
		return "", fmt.Errorf("download %s: %w", key, convert(err))
	}
	if maxSize >= 0 && st.Size > maxSize {
		return "", fmt.Errorf("download %s: %d bytes: %w (%d)", key, st.Size, ErrTooLarge, maxSize)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), obj)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("download %s: %w", key, convert(err))
	}
	if n != st.Size {
		return "", fmt.Errorf("download %s: got %d of %d bytes", key, n, st.Size)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Read returns the whole object at key, refusing more than maxSize bytes.
func (s *Store) Read(ctx context.Context, key string, maxSize int64) ([]byte, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, convert(err))
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, convert(err))
	}
	if int64(len(b)) > maxSize {
		return nil, fmt.Errorf("read %s: %w (%d)", key, ErrTooLarge, maxSize)
	}
	return b, nil
}

// List returns the keys under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, convert(o.Err))
		}
		keys = append(keys, o.Key)
	}
	return keys, nil
}

// ListIncomplete returns the keys of multipart uploads under prefix that
// were started and neither completed nor aborted.
func (s *Store) ListIncomplete(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, prefix, true) {
		if u.Err != nil {
			return nil, fmt.Errorf("list incomplete uploads %s: %w", prefix, convert(u.Err))
		}
		keys = append(keys, u.Key)
	}
	return keys, nil
}

// RemovePrefix deletes every object under prefix, which must end in "/".
func (s *Store) RemovePrefix(ctx context.Context, prefix string) error {
	if prefix == "" || !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("remove prefix %q: must be non-empty and end in /", prefix)
	}
	objects := s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true})
	toRemove := make(chan minio.ObjectInfo)
	var listErr error
	go func() {
		defer close(toRemove)
		for o := range objects {
			if o.Err != nil {
				listErr = o.Err
				return
			}
			toRemove <- o
		}
	}()
	var errs []error
	for e := range s.client.RemoveObjects(ctx, s.bucket, toRemove, minio.RemoveObjectsOptions{}) {
		errs = append(errs, fmt.Errorf("remove %s: %w", e.ObjectName, convert(e.Err)))
	}
	if listErr != nil {
		errs = append(errs, fmt.Errorf("list %s: %w", prefix, convert(listErr)))
	}
	return errors.Join(errs...)
}

// Link is a presigned GET link.
type Link struct {
	URL       string
	ExpiresAt time.Time
}

// Presign returns a GET link to key valid for expiry (at most MaxLinkExpiry).
// The link serves the object as a download (see LinkOptions). It is
// computed locally; no request is made.
func (s *Store) Presign(ctx context.Context, key string, expiry time.Duration, opts LinkOptions) (Link, error) {
	if expiry <= 0 || expiry > MaxLinkExpiry {
		return Link{}, fmt.Errorf("link expiry %s: must be between 1s and %s", expiry, MaxLinkExpiry)
	}
	now := time.Now()
	params := url.Values{"response-content-disposition": {ContentDisposition(filenameOf(opts.Filename, key))}}
	if opts.ContentType != "" {
		params.Set("response-content-type", SafeContentType(opts.ContentType))
	}
	u, err := s.presign.PresignedGetObject(ctx, s.bucket, key, expiry, params)
	if err != nil {
		return Link{}, fmt.Errorf("presign %s: %w", key, convert(err))
	}
	return Link{URL: u.String(), ExpiresAt: now.Add(expiry).UTC().Truncate(time.Second)}, nil
}

func convert(err error) error {
	if err == nil {
		return nil
	}
	r := minio.ToErrorResponse(err)
	switch {
	case r.Code == "NoSuchKey" || (r.StatusCode == http.StatusNotFound && r.Code == ""):
		return fmt.Errorf("%w: %s", ErrObjectNotExist, r.Message)
	case r.Code == "NoSuchBucket":
		return fmt.Errorf("%w: %s", ErrBucketNotExist, r.Message)
	// KeyTooLongError is S3's; XMinioInvalidObjectName MinIO's name for it.
	case r.Code == "KeyTooLongError" || r.Code == "XMinioInvalidObjectName" || r.Code == "InvalidObjectName":
		return fmt.Errorf("%w: %s", ErrInvalidKey, r.Message)
	case r.Code == "AccessDenied":
		return fmt.Errorf("%w: %s", ErrAccessDenied, r.Message)
	}
	return err
}

// lifecycleRuleID names the expiry rule sandq keeps for a prefix.
func lifecycleRuleID(prefix string) string { return "sandq-expire-" + strings.TrimSuffix(prefix, "/") }

// SetPrefixExpiry has the store delete objects under prefix days after they
// were written (and abandoned multipart uploads after a day), keeping the
// bucket's other lifecycle rules.
func (s *Store) SetPrefixExpiry(ctx context.Context, prefix string, days int) error {
	if days < 1 {
		return fmt.Errorf("expiry of %s: %d days, want at least 1", prefix, days)
	}
	cfg, err := s.client.GetBucketLifecycle(ctx, s.bucket)
	if err != nil {
		if minio.ToErrorResponse(err).Code != "NoSuchLifecycleConfiguration" {
			return fmt.Errorf("read lifecycle of %s: %w", s.bucket, convert(err))
		}
		cfg = lifecycle.NewConfiguration()
	}
	id := lifecycleRuleID(prefix)
	rules := cfg.Rules[:0]
	for _, r := range cfg.Rules {
		if r.ID != id {
			rules = append(rules, r)
		}
	}
	cfg.Rules = append(rules, lifecycle.Rule{
		ID:                             id,
		Status:                         "Enabled",
		RuleFilter:                     lifecycle.Filter{Prefix: prefix},
		Expiration:                     lifecycle.Expiration{Days: lifecycle.ExpirationDays(days)},
		AbortIncompleteMultipartUpload: lifecycle.AbortIncompleteMultipartUpload{DaysAfterInitiation: 1},
	})
	if err := s.client.SetBucketLifecycle(ctx, s.bucket, cfg); err != nil {
		return fmt.Errorf("set lifecycle of %s: %w", s.bucket, convert(err))
	}
	return nil
}

// PrefixExpiry reports the days after which objects under prefix expire, 0
// when no sandq rule covers it.
func (s *Store) PrefixExpiry(ctx context.Context, prefix string) (int, error) {
	cfg, err := s.client.GetBucketLifecycle(ctx, s.bucket)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchLifecycleConfiguration" {
			return 0, nil
		}
		return 0, fmt.Errorf("read lifecycle of %s: %w", s.bucket, convert(err))
	}
	for _, r := range cfg.Rules {
		if r.ID == lifecycleRuleID(prefix) && r.Status == "Enabled" {
			return int(r.Expiration.Days), nil
		}
	}
	return 0, nil
}
