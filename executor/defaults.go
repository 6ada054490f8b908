package executor

// Defaults of RunscConfig (and barerunsc.Config's Runsc and Platform): what
// WithDefaults gives a field left empty. Each is written here only; the
// flags of `sandq worker` and `sandq bench` show them in their help.
const (
	// DefaultRunsc is the runsc binary, looked up on PATH.
	DefaultRunsc = "runsc"
	// DefaultPlatform is runsc's --platform.
	DefaultPlatform = "systrap"
	// DefaultStateDir holds the host's per-worker scratch space and runsc
	// state (and, under images/, the image directory image.DefaultDir).
	DefaultStateDir = "/var/lib/sandq"
	// DefaultCgroupParent is the cgroup under which each sandbox gets its own.
	DefaultCgroupParent = "/sandq"
)
