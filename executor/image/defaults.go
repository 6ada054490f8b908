package image

// Defaults of BuildOptions and ImportOptions: what they give a field left
// empty. Each is written here only; `sandq image` and the worker's
// configuration refer to them.
const (
	// DefaultDir is the image directory: the images/ directory of the
	// worker's default state directory (executor.DefaultStateDir).
	DefaultDir = "/var/lib/sandq/images"
	// DefaultSuite is the Debian release Build installs.
	DefaultSuite = "bookworm"
	// DefaultCacheDir keeps downloaded packages across builds.
	DefaultCacheDir = "/var/cache/sandq"
	// DefaultCADir holds the host's extra CA certificates (*.crt), trusted
	// inside an image.
	DefaultCADir = "/usr/local/share/ca-certificates"
	// DefaultUID and DefaultGID are the job user "sandbox" of an image;
	// workers run jobs as them.
	DefaultUID = 1000
	DefaultGID = 1000
)
