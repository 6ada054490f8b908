package jobs

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"

	"github.com/sandq/sandq/executor"
)

// MinCPUs is the smallest CPU limit a job may ask for: the kernel refuses
// a quota under 1ms in each 100ms period.
const MinCPUs = executor.MinCPUs

// HostCPUs is the number of CPUs of this host (of this process's CPU
// affinity), which MaxLimits.CPUs defaults to and a worker's may not
// exceed.
func HostCPUs() float64 { return float64(runtime.NumCPU()) }

// checkCPUs refuses a CPU limit that is not a finite number of at least
// MinCPUs and at most max.
func checkCPUs(cpus, max float64) error {
	switch {
	case math.IsNaN(cpus) || math.IsInf(cpus, 0):
		return &FieldError{Field: "cpus", Msg: fmt.Sprintf("%v is not a number of CPUs", cpus)}
	case cpus <= 0:
		return &FieldError{Field: "cpus", Msg: fmt.Sprintf("%g: must be more than 0 (e.g. 0.5 for half a core)", cpus)}
	case cpus < MinCPUs:
		return &FieldError{Field: "cpus", Msg: fmt.Sprintf("%g is under the minimum of %g", cpus, MinCPUs)}
	case cpus > max:
		return &FieldError{Field: "cpus", Msg: fmt.Sprintf("%g is over the maximum of %g", cpus, max)}
	}
	return nil
}

// ParseCPUs reads a CPU limit as given on the command line: a decimal
// number of CPUs ("0.5", "2"). It refuses what is not one, and 0, negative
// and non-finite values; the maximum is checked where the limits resolve.
func ParseCPUs(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number of CPUs (e.g. 0.5 or 2)", s)
	}
	if err := checkCPUs(f, math.MaxFloat64); err != nil {
		return 0, errors.New(err.(*FieldError).Msg)
	}
	return f, nil
}

// validateCPUs checks the configured default and maximum CPU limits.
func validateCPUs(def, max float64) error {
	switch {
	case math.IsNaN(max) || math.IsInf(max, 0) || max < MinCPUs:
		return fmt.Errorf("max cpus %v: want a number of CPUs of at least %g", max, MinCPUs)
	case math.IsNaN(def) || math.IsInf(def, 0) || def < MinCPUs:
		return fmt.Errorf("default cpus %v: want a number of CPUs of at least %g", def, MinCPUs)
	case def > max:
		return fmt.Errorf("default cpus %g is over the maximum %g", def, max)
	}
	return nil
}

// CheckHostCPUs refuses a worker whose maximum CPU limit is over its
// host's CPUs: a limit it could not give.
func (c Config) CheckHostCPUs() error {
	if host := HostCPUs(); c.MaxLimits.CPUs > host {
		return fmt.Errorf("max cpus %g is over this host's %g CPUs: lower --max-cpus", c.MaxLimits.CPUs, host)
	}
	return nil
}
