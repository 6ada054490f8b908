package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/storage"
)

func runS3(args ...string) (string, error) {
	var out bytes.Buffer
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{s3Command()}, Writer: &out, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run(append([]string{"sandq"}, args...))
	return out.String(), err
}

func TestS3PolicyPrintsEachRolesPolicy(t *testing.T) {
	for _, role := range storage.Roles {
		out, err := runS3("--s3-bucket", "results", "s3", "policy", string(role))
		want, _ := storage.Policy("results", role)
		if err != nil || out != string(want) {
			t.Errorf("s3 policy %s: %v\n%s\nwant\n%s", role, err, out, want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"s3", "policy", "admin"}, `s3 role "admin"`},
		{[]string{"s3", "policy"}, "role: give one of worker, producer, setup"},
		{[]string{"--s3-bucket", "Bad_Bucket", "s3", "policy", "worker"}, `s3 bucket "Bad_Bucket"`},
	} {
		if _, err := runS3(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error naming %q", c.args, err, c.want)
		}
	}
}

// TestS3SetupMakesBucketAndExpiryRule runs `sandq s3 setup` against a real
// MinIO: with the admin's credentials it makes the bucket and the expiry
// rule from the retention flags; with a producer's it is refused.
func TestS3SetupMakesBucketAndExpiryRule(t *testing.T) {
	ctx := context.Background()
	stack := testenv.Services(t, testenv.ServicesOptions{AccessKey: "cmd-root", SecretKey: "cmd-root-secret"})
	root := []string{"--s3-endpoint", stack.MinioAddr, "--s3-access-key", "cmd-root", "--s3-secret-key", "cmd-root-secret", "--s3-bucket", "made"}
	out, err := runS3(append(root, "--result-retention", "240h", "s3", "setup")...)
	if err != nil || !strings.Contains(out, "objects under jobs/ expire 11 days after") {
		t.Fatalf("s3 setup: %v\n%s", err, out)
	}
	st, err := storage.New(storage.Config{Endpoint: stack.MinioAddr, AccessKey: "cmd-root", SecretKey: "cmd-root-secret", Bucket: "made"})
	if err != nil {
		t.Fatal(err)
	}
	if days, err := st.PrefixExpiry(ctx, storage.ObjectPrefix); err != nil || days != 11 {
		t.Errorf("rule after setup: %d days, %v; want 11", days, err)
	}
	// Again with the defaults: the rule follows the settings given.
	if _, err := runS3(append(root, "s3", "setup")...); err != nil {
		t.Fatal(err)
	}
	if days, _ := st.PrefixExpiry(ctx, storage.ObjectPrefix); days != 8 {
		t.Errorf("rule after a second setup: %d days, want 8", days)
	}

	access, err := stack.ProvisionBucket(ctx, "made", devstack.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = runS3("--s3-endpoint", stack.MinioAddr, "--s3-access-key", access.Producer.AccessKey, "--s3-secret-key", access.Producer.SecretKey,
		"--s3-bucket", "made", "--result-retention", "480h", "s3", "setup")
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("s3 setup with the producer's credentials: %v, want access denied", err)
	}
}
