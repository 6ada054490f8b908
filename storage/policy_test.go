package storage

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPolicyGrantsOnlyTheBucket: every statement allows named actions
// (no wildcard) on the bucket or its jobs/ objects, nothing else; the
// producer reads only outputs and manifests.
func TestPolicyGrantsOnlyTheBucket(t *testing.T) {
	for _, role := range Roles {
		b, err := Policy("results", role)
		if err != nil {
			t.Fatal(err)
		}
		var doc policyDoc
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if doc.Version != "2012-10-17" || len(doc.Statement) == 0 {
			t.Errorf("%s: %+v", role, doc)
		}
		for _, st := range doc.Statement {
			for _, a := range st.Action {
				if !strings.HasPrefix(a, "s3:") || strings.Contains(a, "*") {
					t.Errorf("%s: action %q", role, a)
				}
			}
			if st.Sid == "SandqOutputs" {
				want := []string{"arn:aws:s3:::results/jobs/*/outputs/*", "arn:aws:s3:::results/jobs/*/manifest.json"}
				if strings.Join(st.Resource, " ") != strings.Join(want, " ") || strings.Join(st.Action, " ") != "s3:GetObject" {
					t.Errorf("%s: outputs statement %+v", role, st)
				}
				continue
			}
			if st.Effect != "Allow" || len(st.Resource) != 1 {
				t.Errorf("%s: statement %+v", role, st)
			}
			if r := st.Resource[0]; r != "arn:aws:s3:::results" && r != "arn:aws:s3:::results/jobs/*" {
				t.Errorf("%s: resource %q", role, r)
			}
		}
	}
	p, _ := RolePermissions(RoleProducer)
	for _, a := range p.Objects {
		if a == "s3:GetObject" {
			t.Error("the producer may read every object")
		}
	}
	if strings.Join(p.Outputs, " ") != "s3:GetObject" {
		t.Errorf("the producer's rights on outputs: %v, want s3:GetObject (to copy them as inputs)", p.Outputs)
	}
	if _, err := Policy("results", "admin"); err == nil || !strings.Contains(err.Error(), `s3 role "admin"`) {
		t.Errorf("unknown role: %v", err)
	}
	if _, err := Policy("Results_", RoleWorker); err == nil || !strings.Contains(err.Error(), `s3 bucket "Results_"`) {
		t.Errorf("bad bucket: %v", err)
	}
}
