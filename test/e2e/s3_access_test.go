package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// MinIO's root credentials in the e2e stack: setup only.
const (
	e2eRootKey    = "e2e-access"
	e2eRootSecret = "e2e-secret-key"
)

func s3As(t *testing.T, access, secret string) *minio.Client {
	t.Helper()
	c, err := minio.New(env.stack.MinioAddr, &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantDenied(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: allowed, want AccessDenied", what)
	} else if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
		t.Errorf("%s: %v (%s), want AccessDenied", what, err, code)
	}
}

func putSmall(c *minio.Client, bucket, key string) error {
	_, err := c.PutObject(context.Background(), bucket, key, strings.NewReader("x"), 1, minio.PutObjectOptions{})
	return err
}

func getAll(c *minio.Client, bucket, key string) error {
	o, err := c.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer o.Close()
	_, err = io.ReadAll(o)
	return err
}

// TestWorkerS3CredentialsAreLeastPrivilege: the credentials the suite's
// worker runs with (as `sandq dev` and compose.yaml hand them out) run jobs
// end to end, and are refused everything a leaked key could wreck the
// store with: making, deleting or reconfiguring buckets, and other buckets.
func TestWorkerS3CredentialsAreLeastPrivilege(t *testing.T) {
	ctx := context.Background()
	root := s3As(t, e2eRootKey, e2eRootSecret)
	if err := root.MakeBucket(ctx, "e2e-foreign", minio.MakeBucketOptions{}); err != nil && minio.ToErrorResponse(err).Code != "BucketAlreadyOwnedByYou" {
		t.Fatal(err)
	}
	if err := putSmall(root, "e2e-foreign", "jobs/secret"); err != nil {
		t.Fatal(err)
	}
	sc := env.cfg.Storage
	if sc.AccessKey == e2eRootKey {
		t.Errorf("the worker runs with MinIO's root user %q", sc.AccessKey)
	}
	w := s3As(t, sc.AccessKey, sc.SecretKey)

	// It runs a job with an input and an output, and its link works.
	r := runJob(t, jobs.Submission{
		Script: file(t, "copy.sh", `tr a-z A-Z < "$INPUT_DIR/in.txt" > "$OUTPUT_DIR/out.txt"`),
		Inputs: []jobs.File{file(t, "in.txt", "least privilege")},
	})
	wantStatus(t, r, jobs.StatusSucceeded)
	if len(r.Outputs) != 1 || string(download(t, r.Outputs[0].URL)) != "LEAST PRIVILEGE" {
		t.Fatalf("outputs: %+v", r.Outputs)
	}

	wantDenied(t, "create a bucket", w.MakeBucket(ctx, "e2e-made-by-worker", minio.MakeBucketOptions{}))
	wantDenied(t, "delete the bucket", w.RemoveBucket(ctx, sc.Bucket))
	wantDenied(t, "make the bucket public", w.SetBucketPolicy(ctx, sc.Bucket,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::`+sc.Bucket+`/*"]}]}`))
	wantDenied(t, "change the lifecycle", w.SetBucketLifecycle(ctx, sc.Bucket, &lifecycle.Configuration{Rules: []lifecycle.Rule{{
		ID: "wipe", Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: ""}, Expiration: lifecycle.Expiration{Days: 1},
	}}}))
	wantDenied(t, "read another bucket", getAll(w, "e2e-foreign", "jobs/secret"))
	wantDenied(t, "write another bucket", putSmall(w, "e2e-foreign", "jobs/planted"))
	wantDenied(t, "delete in another bucket", w.RemoveObject(ctx, "e2e-foreign", "jobs/secret", minio.RemoveObjectOptions{}))
	wantDenied(t, "write outside jobs/", putSmall(w, sc.Bucket, "planted"))
	if ok, err := root.BucketExists(ctx, "e2e-made-by-worker"); ok || err != nil {
		t.Errorf("a bucket the worker tried to make exists: %v %v", ok, err)
	}

	// The producer (the suite's client, as the API server) wrote this
	// job's inputs. It may read its outputs, the sources of a follow-up
	// job's inputs (copied inside the store), but not its inputs or logs,
	// nor touch the bucket.
	ps := env.producerS3
	if ps.AccessKey == e2eRootKey || ps.AccessKey == sc.AccessKey {
		t.Errorf("the producer runs with %q: want a user of its own", ps.AccessKey)
	}
	p := s3As(t, ps.AccessKey, ps.SecretKey)
	if err := getAll(p, sc.Bucket, r.Outputs[0].Key); err != nil {
		t.Errorf("producer: read an output (what --input-from copies): %v", err)
	}
	var inputKey string
	for o := range root.ListObjects(ctx, sc.Bucket, minio.ListObjectsOptions{Prefix: "jobs/" + r.ID + "/", Recursive: true}) {
		if strings.HasSuffix(o.Key, "/in.txt") {
			inputKey = o.Key
		}
	}
	if inputKey == "" {
		t.Fatalf("no input object under jobs/%s/", r.ID)
	}
	wantDenied(t, "producer: read an input", getAll(p, sc.Bucket, inputKey))
	wantDenied(t, "producer: read a log", getAll(p, sc.Bucket, r.Stdout.Key))
	wantDenied(t, "producer: create a bucket", p.MakeBucket(ctx, "e2e-made-by-producer", minio.MakeBucketOptions{}))
	wantDenied(t, "producer: delete the bucket", p.RemoveBucket(ctx, sc.Bucket))
	wantDenied(t, "producer: read another bucket", getAll(p, "e2e-foreign", "jobs/secret"))
}

// procEnv reads a process's environment.
func procEnv(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// TestDevHandsWorkerAndAPIScopedS3Users: `sandq dev` keeps MinIO's root
// user to itself and starts the worker and the API server with users of
// their own, limited to the bucket.
func TestDevHandsWorkerAndAPIScopedS3Users(t *testing.T) {
	s3 := testenv.FreeAddr(t)
	dir := t.TempDir()
	dev, banner := startDev(t, []string{"--redis-addr", testenv.FreeAddr(t), "--s3-endpoint", s3,
		"--s3-access-key", "dev-root", "--s3-secret-key", "dev-root-secret", "dev", "--data-dir", dir, "--minio-console-port", fmt.Sprint(testenv.FreePort(t))},
		"SANDQ_METRICS_ADDR="+testenv.FreeAddr(t), "SANDQ_LISTEN="+testenv.FreeAddr(t))
	keys := map[string]string{}
	for _, pid := range childPIDs(dev.Pid()) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) < 2 || (args[1] != "worker" && args[1] != "serve") {
			continue
		}
		e := procEnv(t, pid)
		keys[args[1]] = e["SANDQ_S3_ACCESS_KEY"]
		if e["SANDQ_S3_ACCESS_KEY"] == "" || e["SANDQ_S3_ACCESS_KEY"] == "dev-root" || e["SANDQ_S3_SECRET_KEY"] == "dev-root-secret" {
			t.Errorf("sandq %s runs with S3 access key %q: want a user of its own, not MinIO's root", args[1], e["SANDQ_S3_ACCESS_KEY"])
			continue
		}
		c, err := minio.New(s3, &minio.Options{Creds: credentials.NewStaticV4(e["SANDQ_S3_ACCESS_KEY"], e["SANDQ_S3_SECRET_KEY"], ""), Region: "us-east-1"})
		if err != nil {
			t.Fatal(err)
		}
		wantDenied(t, "sandq "+args[1]+": create a bucket", c.MakeBucket(context.Background(), "made-by-"+args[1], minio.MakeBucketOptions{}))
		wantDenied(t, "sandq "+args[1]+": delete the bucket", c.RemoveBucket(context.Background(), "sandq"))
	}
	if len(keys) != 2 || keys["worker"] == keys["serve"] {
		t.Errorf("S3 users of the worker and the server: %v, want two different ones", keys)
	}
	if !strings.Contains(banner, "s3 users") || !strings.Contains(banner, keys["worker"]) {
		t.Errorf("the banner does not name the S3 users:\n%s", banner)
	}
}
