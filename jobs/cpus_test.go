package jobs

import (
	"math"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

// A job's CPU limit: the queue's default when it asks for none, its own
// when it asks for one up to the maximum, and a refusal naming "cpus" for
// zero, negative, non-finite, too small and too large values.
func TestResolveCPUs(t *testing.T) {
	c := validConfig()
	c.DefaultLimits.CPUs, c.MaxLimits.CPUs = 0.5, 2
	got, err := LimitRequest{}.Resolve(c.DefaultLimits, c.MaxLimits)
	if err != nil || got.CPUs != 0.5 {
		t.Errorf("no CPU limit asked: %v CPUs, %v; want the default 0.5", got.CPUs, err)
	}
	for _, cpus := range []float64{MinCPUs, 0.25, 1.5, 2} {
		got, err := LimitRequest{CPUs: ptr(cpus)}.Resolve(c.DefaultLimits, c.MaxLimits)
		if err != nil || got.CPUs != cpus {
			t.Errorf("asked %v CPUs: got %v, %v", cpus, got.CPUs, err)
		}
	}
	for _, tt := range []struct {
		cpus float64
		msg  string
	}{
		{0, "must be more than 0"},
		{-1, "must be more than 0"},
		{math.NaN(), "not a number of CPUs"},
		{math.Inf(1), "not a number of CPUs"},
		{math.Inf(-1), "not a number of CPUs"},
		{0.001, "under the minimum of 0.01"},
		{2.5, "2.5 is over the maximum of 2"},
	} {
		got, err := LimitRequest{CPUs: ptr(tt.cpus)}.Resolve(c.DefaultLimits, c.MaxLimits)
		if got != (Limits{}) {
			t.Errorf("%v CPUs: limits %+v, want zero on error", tt.cpus, got)
		}
		checkFieldError(t, err, "cpus", tt.msg)
	}
}

// --cpus (and --default-cpus, --max-cpus) take a plain number of CPUs.
func TestParseCPUs(t *testing.T) {
	for in, want := range map[string]float64{"0.5": 0.5, "2": 2, " 1.25 ": 1.25, "0.01": 0.01} {
		if got, err := ParseCPUs(in); err != nil || got != want {
			t.Errorf("ParseCPUs(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"": "not a number of CPUs", "half": "not a number of CPUs", "1e": "not a number of CPUs", "50%": "not a number of CPUs",
		"0": "must be more than 0", "-0.5": "must be more than 0", "NaN": "not a number", "Inf": "not a number", "0.001": "under the minimum",
	} {
		_, err := ParseCPUs(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCPUs(%q): %v, want an error saying %q", in, err, want)
		}
	}
}

// The maximum CPU limit defaults to the host's CPUs, the default to one
// CPU (or the maximum when it is less); a default over the maximum, and a
// worker's maximum over its host's CPUs, are refused.
func TestConfigCPUs(t *testing.T) {
	c := validConfig()
	if c.MaxLimits.CPUs != HostCPUs() || c.DefaultLimits.CPUs != min(DefaultCPUs, HostCPUs()) {
		t.Errorf("defaults: max %v default %v; want %v and %v", c.MaxLimits.CPUs, c.DefaultLimits.CPUs, HostCPUs(), min(DefaultCPUs, HostCPUs()))
	}
	small := Config{MaxLimits: Limits{CPUs: 0.5}}.WithDefaults()
	if small.DefaultLimits.CPUs != 0.5 {
		t.Errorf("a maximum of 0.5 CPUs gives a default of %v, want 0.5", small.DefaultLimits.CPUs)
	}
	if err := c.CheckHostCPUs(); err != nil {
		t.Errorf("CheckHostCPUs with the default maximum: %v", err)
	}

	bad := c
	bad.DefaultLimits.CPUs, bad.MaxLimits.CPUs = 2, 1
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "default cpus 2 is over the maximum 1") {
		t.Errorf("default over the maximum: %v", err)
	}
	bad = c
	bad.MaxLimits.CPUs = math.NaN()
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "max cpus") {
		t.Errorf("a NaN maximum: %v", err)
	}
	bad = c
	bad.MaxLimits.CPUs = HostCPUs() + 1
	if err := bad.CheckHostCPUs(); err == nil || !strings.Contains(err.Error(), "over this host's") {
		t.Errorf("a maximum over the host's CPUs: %v", err)
	}
}
