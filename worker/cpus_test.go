package worker

import (
	"strings"
	"testing"

	"github.com/sandq/sandq/jobs"
)

// A job's CPU limit reaches its sandbox, and one over this worker's own
// maximum (which the producer allowed) is refused without a sandbox.
func TestCPULimitThroughFakeRunner(t *testing.T) {
	r := newFakeRig(t, func(c *jobs.Config) { c.MaxLimits.CPUs, c.DefaultLimits.CPUs = 0.5, 0.5 })
	quarter := 0.25
	res := r.wait(r.enqueue("succeed", func(s *jobs.Submission) { s.Limits.CPUs = &quarter })).Result
	if res.Status != jobs.StatusSucceeded || res.Limits.CPUs != 0.25 {
		t.Fatalf("a job of 0.25 CPUs: %s %q, limits.cpus %v", res.Status, res.Reason, res.Limits.CPUs)
	}
	if p := r.runner.Prepared(); len(p) != 1 || p[0].Limits.CPUs != 0.25 {
		t.Fatalf("sandboxes asked for: %+v; want one of 0.25 CPUs", p)
	}
	one := 1.0
	res = r.wait(r.enqueue("succeed", func(s *jobs.Submission) { s.Limits.CPUs = &one })).Result
	if res.Status != jobs.StatusError || !strings.Contains(res.Reason, "refused by this worker's limits: cpus: 1 is over the maximum of 0.5") {
		t.Fatalf("over the worker's maximum: %s %q", res.Status, res.Reason)
	}
	if n := len(r.runner.Prepared()); n != 1 {
		t.Fatalf("%d sandboxes made, want none for the refused job", n)
	}
}
