package devstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	madmin "github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"

	"github.com/sandq/sandq/storage"
)

const (
	rootKey    = "devstack-root"
	rootSecret = "devstack-root-secret"
)

// startStack starts the services for a test. Without redis-server or
// minio it skips under -short and fails otherwise (testenv's rule; testenv
// itself imports this package).
func startStack(t *testing.T, dir string) *Stack {
	t.Helper()
	return startStackWith(t, Options{Dir: dir})
}

// startStackWith starts the services with o and the tests' credentials.
func startStackWith(t *testing.T, o Options) *Stack {
	t.Helper()
	for _, bin := range []string{"redis-server", "minio"} {
		if _, err := exec.LookPath(bin); err != nil && testing.Short() {
			t.Skipf("skipped under -short: %v", err)
		}
	}
	o.AccessKey, o.SecretKey = rootKey, rootSecret
	s, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func s3Client(t *testing.T, s *Stack, c Credentials) *minio.Client {
	t.Helper()
	cl, err := minio.New(s.MinioAddr, &minio.Options{Creds: credentials.NewStaticV4(c.AccessKey, c.SecretKey, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// mustDeny fails unless err is S3's AccessDenied.
func mustDeny(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: allowed, want AccessDenied", what)
		return
	}
	if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
		t.Errorf("%s: %v (code %q), want AccessDenied", what, err, code)
	}
}

func mustAllow(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func put(ctx context.Context, c *minio.Client, bucket, key string) error {
	_, err := c.PutObject(ctx, bucket, key, strings.NewReader("data"), 4, minio.PutObjectOptions{})
	return err
}

func get(ctx context.Context, c *minio.Client, bucket, key string) error {
	o, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer o.Close()
	_, err = io.ReadAll(o)
	return err
}

func list(ctx context.Context, c *minio.Client, bucket, prefix string) error {
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return o.Err
		}
	}
	return nil
}

func presignedStatus(t *testing.T, c *minio.Client, bucket, key string) int {
	t.Helper()
	u, err := c.PresignedGetObject(context.Background(), bucket, key, time.Minute, url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// refusedBucketAdmin checks that c may not create, delete or reconfigure
// buckets, nor touch another bucket.
func refusedBucketAdmin(t *testing.T, who string, c *minio.Client, bucket, other string) {
	ctx := context.Background()
	mustDeny(t, who+": create a bucket", c.MakeBucket(ctx, "made-by-"+strings.ToLower(who), minio.MakeBucketOptions{}))
	mustDeny(t, who+": delete the bucket", c.RemoveBucket(ctx, bucket))
	mustDeny(t, who+": set the bucket policy", c.SetBucketPolicy(ctx, bucket,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::`+bucket+`/*"]}]}`))
	mustDeny(t, who+": set the lifecycle", c.SetBucketLifecycle(ctx, bucket, &lifecycle.Configuration{Rules: []lifecycle.Rule{{
		ID: "wipe", Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: ""}, Expiration: lifecycle.Expiration{Days: 1},
	}}}))
	mustDeny(t, who+": set versioning", c.SetBucketVersioning(ctx, bucket, minio.BucketVersioningConfiguration{Status: "Enabled"}))
	mustDeny(t, who+": read another bucket", get(ctx, c, other, "secret.txt"))
	mustDeny(t, who+": list another bucket", list(ctx, c, other, ""))
	mustDeny(t, who+": write another bucket", put(ctx, c, other, "jobs/planted"))
	mustDeny(t, who+": write outside jobs/", put(ctx, c, bucket, "planted"))
	mustDeny(t, who+": delete another bucket's object", c.RemoveObject(ctx, other, "secret.txt", minio.RemoveObjectOptions{}))
}

// TestProvisionBucketGivesEachRoleOnlyItsActions provisions a bucket on a
// real MinIO and tries every action sandq's code uses, and the dangerous
// ones it does not, with the worker's and the producer's credentials.
func TestProvisionBucketGivesEachRoleOnlyItsActions(t *testing.T) {
	ctx := context.Background()
	s := startStack(t, t.TempDir())
	defer s.Stop()
	root := s3Client(t, s, Credentials{rootKey, rootSecret})
	if err := root.MakeBucket(ctx, "other", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := put(ctx, root, "other", "secret.txt"); err != nil {
		t.Fatal(err)
	}
	a, err := s.ProvisionBucket(ctx, "sandq", ProvisionOptions{ExpiryDays: 3})
	if err != nil {
		t.Fatal(err)
	}
	if a.Worker.AccessKey == a.Producer.AccessKey || a.Worker.AccessKey == rootKey || a.Producer.AccessKey == rootKey || len(a.Worker.SecretKey) < 32 {
		t.Fatalf("credentials are not separate and strong: %+v", a)
	}
	if days, err := mustStore(t, s, Credentials{rootKey, rootSecret}).PrefixExpiry(ctx, storage.ObjectPrefix); err != nil || days != 3 {
		t.Errorf("expiry rule: %d days, %v; want 3", days, err)
	}

	w := s3Client(t, s, a.Worker)
	ok, err := w.BucketExists(ctx, "sandq")
	if err != nil || !ok {
		t.Errorf("worker: bucket exists: %v %v", ok, err)
	}
	mustAllow(t, "worker: write an output", put(ctx, w, "sandq", "jobs/j1/run-1/out.txt"))
	mustAllow(t, "worker: read an input", get(ctx, w, "sandq", "jobs/j1/run-1/out.txt"))
	mustAllow(t, "worker: list a job's prefix", list(ctx, w, "sandq", "jobs/j1/"))
	// An upload of unknown length goes in parts (as logs and streamed
	// outputs do); a failed one is aborted.
	big := bytes.Repeat([]byte("x"), 6<<20)
	_, err = w.PutObject(ctx, "sandq", "jobs/j1/run-1/big.bin", bytes.NewReader(big), -1, minio.PutObjectOptions{PartSize: 5 << 20})
	mustAllow(t, "worker: multipart upload", err)
	core := minio.Core{Client: w}
	id, err := core.NewMultipartUpload(ctx, "sandq", "jobs/j1/run-1/aborted.bin", minio.PutObjectOptions{})
	mustAllow(t, "worker: start a multipart upload", err)
	mustAllow(t, "worker: abort a multipart upload", core.AbortMultipartUpload(ctx, "sandq", "jobs/j1/run-1/aborted.bin", id))
	_, err = w.GetBucketLifecycle(ctx, "sandq")
	mustAllow(t, "worker: read the lifecycle", err)
	if code := presignedStatus(t, w, "sandq", "jobs/j1/run-1/out.txt"); code != http.StatusOK {
		t.Errorf("a link the worker signed: %d, want 200", code)
	}
	refusedBucketAdmin(t, "worker", w, "sandq", "other")

	p := s3Client(t, s, a.Producer)
	mustAllow(t, "producer: write an input", put(ctx, p, "sandq", "jobs/j2/in-1/data.csv"))
	mustAllow(t, "producer: list a job's prefix", list(ctx, p, "sandq", "jobs/j2/"))
	mustAllow(t, "producer: delete an input", p.RemoveObject(ctx, "sandq", "jobs/j2/in-1/data.csv", minio.RemoveObjectOptions{}))
	mustDeny(t, "producer: read an object that is not an output", get(ctx, p, "sandq", "jobs/j1/run-1/out.txt"))
	mustDeny(t, "producer: read a log", get(ctx, p, "sandq", "jobs/j1/run-1/logs/stdout.log"))
	// A job's outputs it may read, to copy them as another job's inputs
	// (--input-from): inside the store, and only under jobs/.
	mustAllow(t, "worker: write an output under outputs/", put(ctx, w, "sandq", "jobs/j1/run-1/outputs/a.csv"))
	ps := mustStore(t, s, a.Producer)
	_, err = ps.Copy(ctx, "jobs/j1/run-1/outputs/a.csv", "jobs/j2/in-1/inputs/a.csv", 4, storage.PutOptions{})
	mustAllow(t, "producer: copy an output as an input", err)
	mustAllow(t, "producer: remove a copied input", ps.RemovePrefix(ctx, "jobs/j2/"))
	_, err = ps.Copy(ctx, "jobs/j1/run-1/out.txt", "jobs/j2/in-1/inputs/out.txt", 4, storage.PutOptions{})
	if !errors.Is(err, storage.ErrAccessDenied) {
		t.Errorf("producer: copy an object that is not an output: %v, want access denied", err)
	}
	mustDeny(t, "producer: read an output of another bucket", get(ctx, p, "other", "secret.txt"))
	if code := presignedStatus(t, p, "sandq", "jobs/j1/run-1/out.txt"); code != http.StatusForbidden {
		t.Errorf("a link the producer signed: %d, want 403", code)
	}
	_, err = p.GetBucketLifecycle(ctx, "sandq")
	mustDeny(t, "producer: read the lifecycle", err)
	refusedBucketAdmin(t, "producer", p, "sandq", "other")

	// The worker deletes a failed attempt's files (RemovePrefix), and the
	// outputs survived everything refused above.
	ws := mustStore(t, s, a.Worker)
	mustAllow(t, "worker: remove a prefix", ws.RemovePrefix(ctx, "jobs/j1/"))
	if keys, err := ws.List(ctx, "jobs/"); err != nil || len(keys) != 0 {
		t.Errorf("after RemovePrefix: %v %v", keys, err)
	}
	if err := get(ctx, root, "other", "secret.txt"); err != nil {
		t.Errorf("the other bucket's object: %v", err)
	}

	// MinIO's admin API is refused too: no user can make itself more.
	wadm, err := madmin.New(s.MinioAddr, a.Worker.AccessKey, a.Worker.SecretKey, false)
	if err != nil {
		t.Fatal(err)
	}
	err = wadm.AddUser(ctx, "planted", "planted-secret-123")
	if r := (madmin.ErrorResponse{}); !errors.As(err, &r) || r.Code != "AccessDenied" {
		t.Errorf("worker: add a user through the admin API: %v, want AccessDenied", err)
	}
}

func mustStore(t *testing.T, s *Stack, c Credentials) *storage.Store {
	t.Helper()
	st, err := storage.New(storage.Config{Endpoint: s.MinioAddr, AccessKey: c.AccessKey, SecretKey: c.SecretKey, Bucket: "sandq"})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestEnsurePrefixExpiryNeedsNoPutWhenTheRuleIsThere: with the worker's
// credentials, a rule at least as long is accepted as it is, and a longer
// one is refused with an error naming the missing permission.
func TestEnsurePrefixExpiryNeedsNoPutWhenTheRuleIsThere(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped under -short: starts a stack of its own (5-9s)")
	}
	ctx := context.Background()
	s := startStack(t, t.TempDir())
	defer s.Stop()
	a, err := s.ProvisionBucket(ctx, "sandq", ProvisionOptions{ExpiryDays: 8})
	if err != nil {
		t.Fatal(err)
	}
	ws := mustStore(t, s, a.Worker)
	for _, days := range []int{1, 8} {
		set, err := ws.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, days)
		if err != nil || set {
			t.Errorf("%d days against a rule of 8: set %v, %v; want accepted as it is", days, set, err)
		}
	}
	_, err = ws.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 15)
	if !errors.Is(err, storage.ErrAccessDenied) || !strings.Contains(err.Error(), "s3:PutLifecycleConfiguration") || !strings.Contains(err.Error(), "sandq s3 setup") {
		t.Errorf("a longer rule with the worker's credentials: %v; want access denied naming s3:PutLifecycleConfiguration and sandq s3 setup", err)
	}
	// The producer may not even read it, and is told which action it lacks.
	_, err = mustStore(t, s, a.Producer).EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 1)
	if !errors.Is(err, storage.ErrAccessDenied) || !strings.Contains(err.Error(), "s3:GetLifecycleConfiguration") {
		t.Errorf("producer: %v; want access denied naming s3:GetLifecycleConfiguration", err)
	}
	// With the admin's credentials a shorter rule is raised, not lowered.
	rs := mustStore(t, s, Credentials{rootKey, rootSecret})
	if set, err := rs.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 15); err != nil || !set {
		t.Errorf("root raising the rule: set %v, %v", set, err)
	}
	if set, err := rs.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 2); err != nil || set {
		t.Errorf("root with a shorter wish: set %v, %v; want the longer rule kept", set, err)
	}
	if days, _ := rs.PrefixExpiry(ctx, storage.ObjectPrefix); days != 15 {
		t.Errorf("rule: %d days, want 15", days)
	}
}

// TestProvisionBucketAgainKeepsCredentials: a restarted dev stack (same
// directory) gets the same credentials, still working, with exactly the
// one policy even if someone attached another meanwhile.
func TestProvisionBucketAgainKeepsCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped under -short: starts a stack of its own (5-9s)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	s := startStack(t, dir)
	a, err := s.ProvisionBucket(ctx, "sandq", ProvisionOptions{})
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	adm, err := madmin.New(s.MinioAddr, rootKey, rootSecret, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{User: a.Worker.AccessKey, Policies: []string{"readwrite"}}); err != nil {
		t.Fatal(err)
	}
	s.Stop()

	s = startStack(t, dir)
	defer s.Stop()
	b, err := s.ProvisionBucket(ctx, "sandq", ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *a != *b {
		t.Errorf("credentials changed across a restart:\n%+v\n%+v", a, b)
	}
	fi, err := os.Stat(filepath.Join(dir, "s3-access-sandq.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file: %v %v, want mode 0600", fi, err)
	}
	w := s3Client(t, s, b.Worker)
	mustAllow(t, "worker after a restart: write", put(ctx, w, "sandq", "jobs/x/y"))
	mustDeny(t, "worker after a restart: create a bucket (readwrite was detached)", w.MakeBucket(ctx, "again", minio.MakeBucketOptions{}))
	if adm, err = madmin.New(s.MinioAddr, rootKey, rootSecret, false); err != nil {
		t.Fatal(err)
	}
	info, err := adm.GetUserInfo(ctx, b.Worker.AccessKey)
	if err != nil || info.PolicyName != PolicyName("sandq", storage.RoleWorker) {
		t.Errorf("worker's policies: %q %v, want only %s", info.PolicyName, err, PolicyName("sandq", storage.RoleWorker))
	}
}
