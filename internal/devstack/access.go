package devstack

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	madmin "github.com/minio/madmin-go/v3"

	"github.com/sandq/sandq/storage"
)

// Credentials are an S3 access key and its secret.
type Credentials struct {
	AccessKey string `json:"access_key"`
	SecretKey string `json:"secret_key"`
}

// BucketAccess is what ProvisionBucket made: a bucket and, for each role,
// a MinIO user allowed only that role's actions on it (storage.Policy).
type BucketAccess struct {
	Bucket string `json:"bucket"`
	// Worker is for `sandq worker`.
	Worker Credentials `json:"worker"`
	// Producer is for `sandq serve` and `sandq enqueue` without --server.
	Producer Credentials `json:"producer"`
}

// ProvisionOptions say how to prepare a bucket.
type ProvisionOptions struct {
	// ExpiryDays, when above 0, sets the expiry rule of storage.ObjectPrefix
	// (the administrator's step `sandq s3 setup` does in production), so
	// workers need not be allowed to change the bucket's lifecycle.
	ExpiryDays int
}

// ProvisionBucket prepares bucket with the stack's MinIO root credentials,
// which stay with the caller: it makes the bucket if missing (and its
// expiry rule, see ProvisionOptions), then for the worker and producer
// roles a MinIO policy "sandq-ROLE-BUCKET" holding storage.Policy and a
// user with only that policy. Secrets are kept in Dir/s3-access-BUCKET.json
// (mode 0600) and reused when called again, so a restarted `sandq dev`
// keeps its credentials; policies are written again each time, so they
// follow the code. MinIO's admin API (users, policies) is MinIO's own,
// which is why this is here and not in storage.
func (s *Stack) ProvisionBucket(ctx context.Context, bucket string, o ProvisionOptions) (*BucketAccess, error) {
	root, err := storage.New(storage.Config{Endpoint: s.MinioAddr, AccessKey: s.rootKey, SecretKey: s.rootSecret, Bucket: bucket})
	if err != nil {
		return nil, err
	}
	if err := root.EnsureBucket(ctx); err != nil {
		return nil, fmt.Errorf("provision bucket %s: %w", bucket, err)
	}
	if o.ExpiryDays > 0 {
		if err := root.SetPrefixExpiry(ctx, storage.ObjectPrefix, o.ExpiryDays); err != nil {
			return nil, fmt.Errorf("provision bucket %s: %w", bucket, err)
		}
	}
	adm, err := madmin.New(s.MinioAddr, s.rootKey, s.rootSecret, false)
	if err != nil {
		return nil, fmt.Errorf("minio admin client: %w", err)
	}
	path := s.AccessFile(bucket)
	access, err := loadAccess(path, bucket)
	if err != nil {
		return nil, err
	}
	for _, r := range []struct {
		role  storage.Role
		creds *Credentials
	}{{storage.RoleWorker, &access.Worker}, {storage.RoleProducer, &access.Producer}} {
		if r.creds.AccessKey == "" || r.creds.SecretKey == "" {
			if *r.creds, err = newCredentials(r.role, bucket); err != nil {
				return nil, err
			}
		}
		if r.creds.AccessKey == s.rootKey {
			return nil, fmt.Errorf("provision bucket %s: the %s user %q is MinIO's root user", bucket, r.role, r.creds.AccessKey)
		}
		if err := provisionUser(ctx, adm, bucket, r.role, *r.creds); err != nil {
			return nil, fmt.Errorf("provision bucket %s, %s user: %w", bucket, r.role, err)
		}
	}
	b, _ := json.MarshalIndent(access, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	s.logger.Debug("bucket provisioned", "bucket", bucket, "worker", access.Worker.AccessKey, "producer", access.Producer.AccessKey)
	return access, nil
}

// AccessFile is where ProvisionBucket keeps the credentials of bucket.
func (s *Stack) AccessFile(bucket string) string {
	return filepath.Join(s.Dir, "s3-access-"+bucket+".json")
}

// PolicyName is the MinIO policy ProvisionBucket keeps for role on bucket.
func PolicyName(bucket string, role storage.Role) string {
	return "sandq-" + string(role) + "-" + bucket
}

func provisionUser(ctx context.Context, adm *madmin.AdminClient, bucket string, role storage.Role, c Credentials) error {
	doc, err := storage.Policy(bucket, role)
	if err != nil {
		return err
	}
	name := PolicyName(bucket, role)
	if err := adm.AddCannedPolicy(ctx, name, doc); err != nil {
		return fmt.Errorf("create policy %s: %w", name, err)
	}
	if err := adm.AddUser(ctx, c.AccessKey, c.SecretKey); err != nil {
		return fmt.Errorf("create user %s: %w", c.AccessKey, err)
	}
	info, err := adm.GetUserInfo(ctx, c.AccessKey)
	if err != nil {
		return fmt.Errorf("read user %s: %w", c.AccessKey, err)
	}
	// Exactly this policy: drop any other a previous run (or a person) attached.
	var others []string
	attached := false
	for _, p := range strings.Split(info.PolicyName, ",") {
		switch p = strings.TrimSpace(p); {
		case p == name:
			attached = true
		case p != "":
			others = append(others, p)
		}
	}
	if len(others) > 0 {
		if _, err := adm.DetachPolicy(ctx, madmin.PolicyAssociationReq{User: c.AccessKey, Policies: others}); err != nil {
			return fmt.Errorf("detach %s from user %s: %w", strings.Join(others, ","), c.AccessKey, err)
		}
	}
	if !attached {
		// MinIO has been seen to answer "canned policy does not exist" to
		// attaching a policy it had just created (once in about five
		// runs of the Helm chart's test); it is asked again, a moment
		// later, a few times.
		for try := 1; ; try++ {
			_, err := adm.AttachPolicy(ctx, madmin.PolicyAssociationReq{User: c.AccessKey, Policies: []string{name}})
			if err == nil {
				break
			}
			if try == attachTries || !strings.Contains(err.Error(), "does not exist") {
				return fmt.Errorf("attach policy %s to user %s: %w", name, c.AccessKey, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * 200 * time.Millisecond):
			}
		}
	}
	return nil
}

// attachTries is how many times provisionUser asks MinIO to attach a
// policy it says does not exist yet.
const attachTries = 5

// loadAccess reads the credentials a previous call kept, if any.
func loadAccess(path, bucket string) (*BucketAccess, error) {
	a := &BucketAccess{Bucket: bucket}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, a); err != nil || a.Bucket != bucket {
		// Unreadable or another bucket's: make new users.
		return &BucketAccess{Bucket: bucket}, nil
	}
	return a, nil
}

// newCredentials names the user after its role and bucket (MinIO access
// keys are at most 20 characters) and gives it a random secret.
func newCredentials(role storage.Role, bucket string) (Credentials, error) {
	key := string(role) + "-" + bucket
	if len(key) > 20 {
		h := sha256.Sum256([]byte(bucket))
		key = string(role) + "-" + hex.EncodeToString(h[:4])
	}
	secret := make([]byte, 20)
	if _, err := rand.Read(secret); err != nil {
		return Credentials{}, err
	}
	return Credentials{AccessKey: key, SecretKey: hex.EncodeToString(secret)}, nil
}
