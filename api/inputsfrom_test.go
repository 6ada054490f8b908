package api

import (
	"context"
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
)

// TestInputsFromRefusals: the spec's inputs_from is checked as it is read
// (bad IDs, bad globs, unknown keys), and its jobs before any file is
// stored: a pending job is 409 naming it and its state, another tenant's
// job 404 in the words of a job that does not exist. None of it leaves
// anything behind.
func TestInputsFromRefusals(t *testing.T) {
	f := newFixture(t)
	// No worker serves the API tests' queues: this job stays pending.
	a := f.submit(t, tokens["acme"], script("p.sh", "true"))
	if a.code != 201 {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	pending := a.job(t).ID
	t.Cleanup(func() { f.srv.client.Cancel(context.Background(), pending) })
	missing := jobs.NewJobID()

	before := f.state(t)
	for _, c := range []struct {
		name, token, spec string
		code              int
		errCode, field    string
		says              string
	}{
		{"bad job ID", tokens["acme"], `{"inputs_from":[{"job":"../x"}]}`, 400, "invalid_spec", "inputs_from", `job ID "../x" is not valid`},
		{"bad glob", tokens["acme"], `{"inputs_from":[{"job":"` + pending + `","glob":"[a-"}]}`, 400, "invalid_spec", "inputs_from", "not a valid pattern"},
		{"unknown key", tokens["acme"], `{"inputs_from":[{"job":"` + pending + `","path":"a"}]}`, 400, "invalid_spec", "path", ""},
		{"not finished", tokens["acme"], `{"inputs_from":[{"job":"` + pending + `"}]}`, 409, "job_not_finished", "inputs_from", "job " + pending + " is not finished (it is pending)"},
		{"another tenant's", tokens["beta"], `{"inputs_from":[{"job":"` + pending + `"}]}`, 404, "not_found", "inputs_from", "no job " + pending},
		{"no such job", tokens["acme"], `{"inputs_from":[{"job":"` + missing + `"}]}`, 404, "not_found", "inputs_from", "no job " + missing},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := f.submit(t, c.token, spec(c.spec), script("a.sh", "true"), input("x.csv", "1"))
			if a.code != c.code {
				t.Fatalf("status %d, want %d: %s", a.code, c.code, a.body)
			}
			if e := a.err(t); e.Code != c.errCode || e.Field != c.field || !strings.Contains(e.Message, c.says) {
				t.Errorf("error %+v, want code %s, field %q and %q in the message", e, c.errCode, c.field, c.says)
			}
		})
	}
	if after := f.state(t); after != before {
		t.Errorf("refused requests left something:\nbefore %s\nafter  %s", before, after)
	}
}
