package bench

// Defaults of Options: what WithDefaults gives a field left zero. `sandq
// bench` shows them in its flags' help. LatencyConcurrency defaults to the
// number of CPUs, Warm to LatencyConcurrency (at least 2), the image
// directory, image, runsc and platform to the worker's (image.DefaultDir,
// jobs.DefaultImage, executor.DefaultRunsc, executor.DefaultPlatform).
const (
	DefaultFloorRuns      = 10
	DefaultLatencyJobs    = 200
	DefaultRate           = 2.0
	DefaultThroughputJobs = 500
	DefaultMemoryJobs     = 2
	DefaultSeed           = 1
	// DefaultPandasImage is the image of the python-pandas variant: the
	// default image has neither pandas nor matplotlib.
	DefaultPandasImage = "analysis"
)

// DefaultVariants returns Options.Variants' default: shell and python.
// python-pandas is asked for by name: it needs the analysis image, and its
// cold jobs take seconds each.
func DefaultVariants() []string { return []string{VariantShell, VariantPython} }

// DefaultConcurrency returns Options.Concurrency's default: the worker
// concurrencies of the throughput run.
func DefaultConcurrency() []int { return []int{1, 2, 4, 8} }
