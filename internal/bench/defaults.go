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
)

// DefaultVariants returns Options.Variants' default: every variant.
func DefaultVariants() []string { return []string{VariantShell, VariantPython} }

// DefaultConcurrency returns Options.Concurrency's default: the worker
// concurrencies of the throughput run.
func DefaultConcurrency() []int { return []int{1, 2, 4, 8} }
