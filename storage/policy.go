package storage

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// ObjectPrefix is where sandq keeps every object it writes: inputs, outputs
// and logs of job ID live under ObjectPrefix + ID + "/".
const ObjectPrefix = "jobs/"

// Role names what a set of S3 credentials is for. Each role gets the
// actions its code paths call and nothing else (RolePermissions).
type Role string

const (
	// RoleWorker runs jobs (sandq worker): it reads inputs, writes outputs
	// and logs, removes a failed attempt's files, signs the download links
	// (a link carries its signer's rights, so the worker needs GetObject),
	// and checks the bucket's expiry rule at start.
	RoleWorker Role = "worker"
	// RoleProducer submits jobs (sandq serve, and sandq enqueue without
	// --server): it writes inputs and removes them when a submission is
	// refused or a queued job is cancelled. The only objects it reads are
	// jobs' outputs and manifests, which it copies as a new job's inputs
	// (Copy, for --input-from); not logs, nor inputs, except an input it
	// uploaded itself whose name the same patterns match (a directory
	// "outputs/", or "manifest.json").
	RoleProducer Role = "producer"
	// RoleSetup prepares the bucket once (sandq s3 setup): it creates the
	// bucket and sets the expiry rule of ObjectPrefix. Keep these
	// credentials with the operator, not on worker or API hosts.
	RoleSetup Role = "setup"
)

// Roles lists every role, in the order the docs give them.
var Roles = []Role{RoleWorker, RoleProducer, RoleSetup}

// Permissions are the S3 actions a role needs: Bucket on the bucket
// (arn:aws:s3:::BUCKET), Objects on the objects under ObjectPrefix
// (arn:aws:s3:::BUCKET/jobs/*), Outputs on jobs' outputs and manifests
// only (OutputResources).
type Permissions struct {
	Bucket  []string
	Objects []string
	Outputs []string
}

// OutputResources are the keys, under ObjectPrefix, of jobs' outputs
// (jobs/ID/run-N-S/outputs/PATH) and of their manifests (a trimmed
// result's whole lists), as S3 policy resource patterns.
var OutputResources = []string{"*/outputs/*", "*/manifest.json"}

// Why each action is needed, from the calls in this package:
//
//	s3:ListBucket                 HeadBucket (EnsureBucket's check) and
//	                              ListObjectsV2 (RemovePrefix)
//	s3:GetObject                  GetObject/HeadObject (Download, Read), the
//	                              presigned links the worker signs, and the
//	                              source of CopyObject (Copy; the producer,
//	                              on outputs and manifests only)
//	s3:PutObject                  PutObject, and CreateMultipartUpload,
//	                              UploadPart, CompleteMultipartUpload of
//	                              uploads over a part or of unknown size
//	s3:AbortMultipartUpload       minio-go aborts a multipart upload that failed
//	s3:DeleteObject               DeleteObjects (RemovePrefix)
//	s3:GetLifecycleConfiguration  EnsurePrefixExpiry's check at worker start
//	s3:PutLifecycleConfiguration  SetPrefixExpiry (setup only)
//	s3:CreateBucket               MakeBucket (setup only)
//
// Not needed: s3:GetBucketLocation (the region is configured, so minio-go
// never asks), s3:ListBucketMultipartUploads and
// s3:ListMultipartUploadParts (nothing lists incomplete uploads; the expiry
// rule aborts abandoned ones).
var rolePermissions = map[Role]Permissions{
	RoleWorker: {
		Bucket:  []string{"s3:ListBucket", "s3:GetLifecycleConfiguration"},
		Objects: []string{"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
	},
	RoleProducer: {
		Bucket:  []string{"s3:ListBucket"},
		Objects: []string{"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"},
		Outputs: []string{"s3:GetObject"},
	},
	RoleSetup: {
		Bucket: []string{"s3:CreateBucket", "s3:ListBucket", "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"},
	},
}

// RolePermissions returns the actions role needs.
func RolePermissions(role Role) (Permissions, error) {
	p, ok := rolePermissions[role]
	if !ok {
		return Permissions{}, fmt.Errorf("s3 role %q: want one of %s", role, roleNames())
	}
	return Permissions{Bucket: append([]string(nil), p.Bucket...), Objects: append([]string(nil), p.Objects...), Outputs: append([]string(nil), p.Outputs...)}, nil
}

func roleNames() string {
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

type policyDoc struct {
	Version   string            `json:"Version"`
	Statement []policyStatement `json:"Statement"`
}

type policyStatement struct {
	Sid      string   `json:"Sid"`
	Effect   string   `json:"Effect"`
	Action   []string `json:"Action"`
	Resource []string `json:"Resource"`
}

// Policy returns an identity policy (IAM JSON, indented, ending in a
// newline) that grants role its actions on bucket and nothing else. It uses
// only AWS's policy grammar, so AWS IAM, MinIO (mc admin policy create) and
// other S3 stores with IAM policies take it as it is.
func Policy(bucket string, role Role) ([]byte, error) {
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return nil, fmt.Errorf("s3 bucket %q: %w", bucket, err)
	}
	p, err := RolePermissions(role)
	if err != nil {
		return nil, err
	}
	doc := policyDoc{Version: "2012-10-17"}
	doc.Statement = append(doc.Statement, policyStatement{
		Sid: "SandqBucket", Effect: "Allow", Action: p.Bucket,
		Resource: []string{"arn:aws:s3:::" + bucket},
	})
	if len(p.Objects) > 0 {
		doc.Statement = append(doc.Statement, policyStatement{
			Sid: "SandqObjects", Effect: "Allow", Action: p.Objects,
			Resource: []string{"arn:aws:s3:::" + bucket + "/" + ObjectPrefix + "*"},
		})
	}
	if len(p.Outputs) > 0 {
		st := policyStatement{Sid: "SandqOutputs", Effect: "Allow", Action: p.Outputs}
		for _, r := range OutputResources {
			st.Resource = append(st.Resource, "arn:aws:s3:::"+bucket+"/"+ObjectPrefix+r)
		}
		doc.Statement = append(doc.Statement, st)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
