package executor

import (
	"math"
	"strings"
	"testing"
)

// A sandbox's CPU limit is 0 (none) or at least MinCPUs, and finite.
func TestCheckSpecCPUs(t *testing.T) {
	image := t.TempDir()
	for _, cpus := range []float64{-1, math.NaN(), math.Inf(1), 0.001} {
		s := sleeper(image)
		s.Limits.CPUs = cpus
		if err := checkSpec(s); err == nil || !strings.Contains(err.Error(), "sandbox CPU limit") {
			t.Errorf("CPUs %v: %v, want a refusal of the CPU limit", cpus, err)
		}
	}
}

// The CPU limit is not part of a warm pool's shape: Run sets the job's.
func TestWarmFitsAnyCPULimit(t *testing.T) {
	shape := sleeper("/img")
	shape.Limits.CPUs = 1
	p := &WarmRunner{shape: shape}
	job := sleeper("/img")
	job.Env = append(job.Env, "HOME=/home/sandbox")
	job.Limits.CPUs = 0.25
	if !p.fits(job) {
		t.Error("a job of another CPU limit does not fit the warm pool")
	}
	job.Limits.Memory *= 2
	if p.fits(job) {
		t.Error("a job of another memory limit fits the warm pool")
	}
	if q := cpuQuotaMicros(0.25); q != 25000 {
		t.Errorf("quota of 0.25 CPUs: %d us, want 25000", q)
	}
}
