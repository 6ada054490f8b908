package deploy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.yaml.in/yaml/v3"

	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

// TestPolicyFilesMatchTheCode: the policies compose.yaml installs are the
// ones the code says each role needs.
func TestPolicyFilesMatchTheCode(t *testing.T) {
	for _, role := range storage.Roles {
		want, err := storage.Policy("sandq", role)
		if err != nil {
			t.Fatal(err)
		}
		name := "s3-policy-" + string(role) + ".json"
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("deploy/%s differs from the code; regenerate it with\n  sandq --s3-bucket sandq s3 policy %s > deploy/%s\nwant:\n%s", name, role, name, want)
		}
	}
}

type composeService struct {
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	// Volumes are "source:target[:mode]", as docker-compose config prints them.
	Volumes   []string `yaml:"volumes"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

func resolvedCompose(t *testing.T) map[string]composeService {
	t.Helper()
	out, err := composeConfig(t, "../compose.yaml")
	if err != nil {
		t.Fatalf("compose.yaml does not validate: %v\n%s", err, out)
	}
	var doc struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Services
}

// TestComposeGivesNoSandqProcessTheRootUser: MinIO's root credentials go to
// MinIO and the two setup services only; the worker and the API server
// each get their own user, and start only after it exists.
func TestComposeGivesNoSandqProcessTheRootUser(t *testing.T) {
	svc := resolvedCompose(t)
	rootUser, rootPass := svc["minio"].Environment["MINIO_ROOT_USER"], svc["minio"].Environment["MINIO_ROOT_PASSWORD"]
	if rootUser == "" || rootPass == "" {
		t.Fatalf("minio has no root credentials: %v", svc["minio"].Environment)
	}
	keys := map[string]bool{}
	for _, name := range []string{"worker", "api"} {
		env := svc[name].Environment
		if env["SANDQ_S3_ACCESS_KEY"] == "" || env["SANDQ_S3_ACCESS_KEY"] == rootUser || env["SANDQ_S3_SECRET_KEY"] == rootPass {
			t.Errorf("%s runs with S3 access key %q: want its own user, not MinIO's root", name, env["SANDQ_S3_ACCESS_KEY"])
		}
		keys[env["SANDQ_S3_ACCESS_KEY"]] = true
		if svc[name].DependsOn["s3-users"].Condition != "service_completed_successfully" {
			t.Errorf("%s does not wait for s3-users: %+v", name, svc[name].DependsOn)
		}
	}
	if len(keys) != 2 {
		t.Errorf("worker and api share an S3 user: %v", keys)
	}
	for _, name := range []string{"worker", "api"} {
		for k, v := range svc[name].Environment {
			if v == rootPass {
				t.Errorf("service %s gets MinIO's root password in %s", name, k)
			}
		}
	}
}

// TestComposeS3SetupWorks runs compose.yaml's s3-setup and s3-users steps
// as written (sandq and the MinIO client against a real MinIO), twice,
// then checks what the worker's and the API's credentials may do.
func TestComposeS3SetupWorks(t *testing.T) {
	testenv.Long(t, "builds sandq and runs MinIO and mc (about a minute)")
	testenv.NeedBinary(t, "mc")
	mc, err := exec.LookPath("mc")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mc, "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "mc version") {
		t.Fatalf("%s is not the MinIO client: %v %s", mc, err, out)
	}
	svc := resolvedCompose(t)
	setup, users := svc["s3-setup"], svc["s3-users"]
	ctx := context.Background()
	dir := t.TempDir()
	stack := testenv.Services(t, testenv.ServicesOptions{
		AccessKey: svc["minio"].Environment["MINIO_ROOT_USER"], SecretKey: svc["minio"].Environment["MINIO_ROOT_PASSWORD"]})
	sandq := testenv.Sandq(t)
	// As in the containers: minio:9000 is the stack's MinIO, the policy
	// files are mounted from deploy/, mc keeps its config in a home of its own.
	local := func(s string) string {
		// docker-compose config prints a literal $ as $$, as the file has it.
		s = strings.ReplaceAll(s, "$$", "$")
		s = strings.ReplaceAll(s, "minio:9000", stack.MinioAddr)
		for _, v := range users.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				t.Fatalf("s3-users volume %q", v)
			}
			s = strings.ReplaceAll(s, parts[1], parts[0])
		}
		return s
	}
	environ := func(env map[string]string) []string {
		out := []string{"PATH=" + filepath.Dir(mc) + ":/usr/bin:/bin", "HOME=" + dir, "MC_CONFIG_DIR=" + filepath.Join(dir, "mc")}
		for k, v := range env {
			out = append(out, k+"="+local(v))
		}
		return out
	}
	if len(setup.Command) == 0 || len(users.Entrypoint) != 2 || len(users.Command) != 1 {
		t.Fatalf("unexpected shape: s3-setup %v, s3-users %v %v", setup.Command, users.Entrypoint, users.Command)
	}
	for run := 1; run <= 2; run++ {
		cmd := exec.Command(sandq, setup.Command...)
		cmd.Env = environ(setup.Environment)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("s3-setup (run %d): %v\n%s", run, err, out)
		}
		cmd = exec.Command(users.Entrypoint[0], users.Entrypoint[1], local(users.Command[0]))
		cmd.Env = environ(users.Environment)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("s3-users (run %d): %v\n%s", run, err, out)
		}
	}

	bucket := svc["worker"].Environment["SANDQ_S3_BUCKET"]
	client := func(service string) (*minio.Client, *storage.Store) {
		env := svc[service].Environment
		c, err := minio.New(stack.MinioAddr, &minio.Options{Creds: credentials.NewStaticV4(env["SANDQ_S3_ACCESS_KEY"], env["SANDQ_S3_SECRET_KEY"], ""), Region: "us-east-1"})
		if err != nil {
			t.Fatal(err)
		}
		st, err := storage.New(storage.Config{Endpoint: stack.MinioAddr, AccessKey: env["SANDQ_S3_ACCESS_KEY"], SecretKey: env["SANDQ_S3_SECRET_KEY"], Bucket: bucket})
		if err != nil {
			t.Fatal(err)
		}
		return c, st
	}
	w, ws := client("worker")
	if err := ws.EnsureBucket(ctx); err != nil {
		t.Errorf("worker: the bucket: %v", err)
	}
	// Defaults: 7 days of retention, plus a day.
	if set, err := ws.EnsurePrefixExpiry(ctx, storage.ObjectPrefix, 8); err != nil || set {
		t.Errorf("worker: the expiry rule s3-setup made: set %v, %v", set, err)
	}
	if _, err := ws.Put(ctx, "jobs/x/out.txt", strings.NewReader("out"), 3, storage.PutOptions{}); err != nil {
		t.Errorf("worker: write: %v", err)
	}
	if b, err := ws.Read(ctx, "jobs/x/out.txt", 10); err != nil || string(b) != "out" {
		t.Errorf("worker: read: %q %v", b, err)
	}
	err = w.MakeBucket(ctx, "another", minio.MakeBucketOptions{})
	if minio.ToErrorResponse(err).Code != "AccessDenied" {
		t.Errorf("worker: create a bucket: %v, want AccessDenied", err)
	}
	err = w.RemoveBucket(ctx, bucket)
	if minio.ToErrorResponse(err).Code != "AccessDenied" {
		t.Errorf("worker: delete the bucket: %v, want AccessDenied", err)
	}

	_, as := client("api")
	if _, err := as.Put(ctx, "jobs/y/in-1/data.csv", strings.NewReader("1,2"), 3, storage.PutOptions{}); err != nil {
		t.Errorf("api: write an input: %v", err)
	}
	if err := as.RemovePrefix(ctx, "jobs/y/"); err != nil {
		t.Errorf("api: remove a refused submission's inputs: %v", err)
	}
	if _, err := as.Read(ctx, "jobs/x/out.txt", 10); !errors.Is(err, storage.ErrAccessDenied) {
		t.Errorf("api: read an output: %v, want access denied", err)
	}
}
