package jobs

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Runtimes a script can run under.
const (
	RuntimePython = "python"
	RuntimeNode   = "node"
	RuntimeShell  = "shell"
)

var runtimeAliases = map[string]string{
	"python": RuntimePython, "python3": RuntimePython, "py": RuntimePython,
	"node": RuntimeNode, "nodejs": RuntimeNode, "javascript": RuntimeNode, "js": RuntimeNode,
	"shell": RuntimeShell, "sh": RuntimeShell, "bash": RuntimeShell,
}

var runtimeByExt = map[string]string{
	".py": RuntimePython, ".js": RuntimeNode, ".mjs": RuntimeNode, ".cjs": RuntimeNode,
	".sh": RuntimeShell, ".bash": RuntimeShell,
}

// interpreters are the argv prefix of each runtime inside the image.
var interpreters = map[string][]string{
	// Not -u: unbuffered text I/O in CPython drops the rest of a write that
	// a pipe accepts only partly, and gVisor's host pipes do that.
	RuntimePython: {"/usr/bin/python3"},
	RuntimeNode:   {"/usr/bin/node"},
	RuntimeShell:  {"/bin/bash"},
}

// Interpreter is the argv prefix that runs a script of runtime inside the
// image; ok is false for a runtime sandq does not know.
func Interpreter(runtime string) (argv []string, ok bool) {
	argv, ok = interpreters[runtime]
	return slices.Clone(argv), ok
}

// ResolveRuntime names the runtime for a script: the one asked for (any
// alias), else the one its extension implies.
func ResolveRuntime(asked, scriptName string) (string, error) {
	if asked != "" {
		rt, ok := runtimeAliases[strings.ToLower(asked)]
		if !ok {
			return "", &FieldError{Field: "runtime", Msg: fmt.Sprintf("unknown runtime %q (want python, node or shell)", asked)}
		}
		return rt, nil
	}
	ext := strings.ToLower(path.Ext(scriptName))
	if rt, ok := runtimeByExt[ext]; ok {
		return rt, nil
	}
	return "", &FieldError{Field: "runtime", Msg: fmt.Sprintf("cannot tell the runtime of %q from its extension; pass a runtime (python, node or shell)", scriptName)}
}

// FieldError is a refusal of a submitted job, naming the field at fault.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// LimitRequest is what a job asks for; zero fields take the queue's default.
type LimitRequest struct {
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
	MemoryBytes    int64   `json:"memory_bytes,omitempty"`
	DiskBytes      int64   `json:"disk_bytes,omitempty"`
	OutputBytes    int64   `json:"output_bytes,omitempty"`
	OutputFiles    int     `json:"output_files,omitempty"`
	// CPUs is the CPU limit asked for (0.5: half a core); nil takes the
	// queue's default. Zero, negative and non-finite values are refused.
	CPUs *float64 `json:"cpus,omitempty"`
}

// Limits are a job's resolved limits.
type Limits struct {
	Timeout     time.Duration `json:"-"`
	Memory      int64         `json:"memory_bytes"`
	Disk        int64         `json:"disk_bytes"`
	OutputBytes int64         `json:"output_bytes"`
	OutputFiles int           `json:"output_files"`
	// CPUs is the CPU limit, in cores (see executor.Limits.CPUs). 0 only
	// in tasks queued before there was one: the worker then applies its
	// default.
	CPUs float64 `json:"cpus,omitempty"`
}

// Resolve applies defaults to what a job asked for and refuses anything over
// the maxima, naming the field.
func (r LimitRequest) Resolve(def, max Limits) (Limits, error) {
	l := def
	if r.TimeoutSeconds < 0 || r.TimeoutSeconds != r.TimeoutSeconds || r.MemoryBytes < 0 || r.DiskBytes < 0 || r.OutputBytes < 0 || r.OutputFiles < 0 {
		return Limits{}, &FieldError{Field: "limits", Msg: "limits must not be negative"}
	}
	if r.TimeoutSeconds > max.Timeout.Seconds() {
		return Limits{}, &FieldError{Field: "timeout", Msg: fmt.Sprintf("%gs is over the maximum of %s", r.TimeoutSeconds, max.Timeout)}
	}
	if r.TimeoutSeconds > 0 {
		l.Timeout = time.Duration(r.TimeoutSeconds * float64(time.Second))
	}
	if r.MemoryBytes > 0 {
		l.Memory = r.MemoryBytes
	}
	if r.DiskBytes > 0 {
		l.Disk = r.DiskBytes
	}
	if r.OutputBytes > 0 {
		l.OutputBytes = r.OutputBytes
	}
	if r.OutputFiles > 0 {
		l.OutputFiles = r.OutputFiles
	}
	if r.CPUs != nil {
		if err := checkCPUs(*r.CPUs, max.CPUs); err != nil {
			return Limits{}, err
		}
		l.CPUs = *r.CPUs
	}
	switch {
	case l.Timeout > max.Timeout:
		return Limits{}, &FieldError{Field: "timeout", Msg: fmt.Sprintf("%s is over the maximum of %s", l.Timeout, max.Timeout)}
	case l.Timeout < time.Second:
		return Limits{}, &FieldError{Field: "timeout", Msg: fmt.Sprintf("%s is under the minimum of 1s", l.Timeout)}
	case l.Memory > max.Memory:
		return Limits{}, &FieldError{Field: "memory", Msg: fmt.Sprintf("%s is over the maximum of %s", FormatSize(l.Memory), FormatSize(max.Memory))}
	case l.Memory < MinMemory:
		return Limits{}, &FieldError{Field: "memory", Msg: fmt.Sprintf("%s is under the minimum of %s", FormatSize(l.Memory), FormatSize(MinMemory))}
	case l.Disk > max.Disk:
		return Limits{}, &FieldError{Field: "disk", Msg: fmt.Sprintf("%s is over the maximum of %s", FormatSize(l.Disk), FormatSize(max.Disk))}
	case l.Disk < MinDisk:
		return Limits{}, &FieldError{Field: "disk", Msg: fmt.Sprintf("%s is under the minimum of %s", FormatSize(l.Disk), FormatSize(MinDisk))}
	case l.OutputBytes > max.OutputBytes:
		return Limits{}, &FieldError{Field: "output_size", Msg: fmt.Sprintf("%s is over the maximum of %s", FormatSize(l.OutputBytes), FormatSize(max.OutputBytes))}
	case l.OutputBytes < 4096:
		return Limits{}, &FieldError{Field: "output_size", Msg: "under the minimum of 4KiB"}
	case l.OutputFiles > max.OutputFiles:
		return Limits{}, &FieldError{Field: "output_files", Msg: fmt.Sprintf("%d is over the maximum of %d", l.OutputFiles, max.OutputFiles)}
	case l.CPUs > max.CPUs:
		return Limits{}, &FieldError{Field: "cpus", Msg: fmt.Sprintf("the default of %g is over the maximum of %g", l.CPUs, max.CPUs)}
	}
	return l, nil
}

// Minimum limits: below these a sandbox cannot start.
const (
	MinMemory = 64 << 20
	MinDisk   = 16 << 20
)

// MaxNameBytes bounds an input or script name.
const MaxNameBytes = 255

// CheckName checks an input or script name: a relative path of one or more
// components, none empty, ".", or "..", without NUL, control characters or
// backslashes, valid UTF-8, each component at most 255 bytes.
func CheckName(field, name string) error {
	bad := func(msg string) error { return &FieldError{Field: field, Msg: fmt.Sprintf("name %q %s", name, msg)} }
	switch {
	case name == "":
		return &FieldError{Field: field, Msg: "empty name"}
	case len(name) > 1024:
		return &FieldError{Field: field, Msg: fmt.Sprintf("name of %d bytes is over the maximum of 1024", len(name))}
	case !utf8.ValidString(name):
		return bad("is not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return bad("is absolute")
	case strings.Contains(name, `\`):
		return bad("contains a backslash")
	}
	for _, r := range name {
		if r == 0 {
			return bad("contains NUL")
		}
		if unicode.IsControl(r) {
			return bad("contains a control character")
		}
	}
	for _, part := range strings.Split(name, "/") {
		switch {
		case part == "":
			return bad("has an empty path component")
		case part == "." || part == "..":
			return bad("has a . or .. component")
		case len(part) > MaxNameBytes:
			return bad(fmt.Sprintf("has a component over %d bytes", MaxNameBytes))
		}
	}
	return nil
}

// ReservedPrefix begins the names sandq gives its own files in the job
// directory (/mnt/job) beside the script: launchers, requests, the Python
// site directory. A script may not be named so.
const ReservedPrefix = ".sandq-"

// checkScriptName checks the script's name: a name as CheckName has it,
// outside the names sandq keeps for itself in the job directory.
func checkScriptName(name string) error {
	if err := CheckName("script", name); err != nil {
		return err
	}
	if first, _, _ := strings.Cut(name, "/"); strings.HasPrefix(first, ReservedPrefix) {
		return &FieldError{Field: "script", Msg: fmt.Sprintf("name %q begins with %s, which sandq keeps for its own files beside the script", name, ReservedPrefix)}
	}
	return nil
}

// CheckNames checks each name and refuses duplicates, also those that differ
// only in case (they would collide on case-insensitive file systems), and a
// name that is both a file and a directory of another.
func CheckNames(field string, names []string) error {
	seen := map[string]string{}
	for _, n := range names {
		if err := CheckName(field, n); err != nil {
			return err
		}
		k := strings.ToLower(n)
		if prev, ok := seen[k]; ok {
			return &FieldError{Field: field, Msg: fmt.Sprintf("names %q and %q collide", prev, n)}
		}
		seen[k] = n
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		for dir := path.Dir(n); dir != "."; dir = path.Dir(dir) {
			if prev, ok := seen[strings.ToLower(dir)]; ok {
				return &FieldError{Field: field, Msg: fmt.Sprintf("names %q and %q collide: one is a directory of the other", prev, n)}
			}
		}
	}
	return nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ReservedEnv are set by sandq in sandboxes; a job may not set them
// (compared without case).
var ReservedEnv = []string{"INPUT_DIR", "OUTPUT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}

// CheckEnv refuses invalid or reserved variable names and values with NUL.
func CheckEnv(env map[string]string, maxVars, maxBytes int) error {
	if len(env) > maxVars {
		return &FieldError{Field: "env", Msg: fmt.Sprintf("%d variables is over the maximum of %d", len(env), maxVars)}
	}
	total := 0
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := env[k]
		if !envName.MatchString(k) {
			return &FieldError{Field: "env", Msg: fmt.Sprintf("name %q is not a valid variable name (letters, digits and _, not starting with a digit)", k)}
		}
		for _, r := range ReservedEnv {
			if strings.EqualFold(k, r) {
				return &FieldError{Field: "env", Msg: fmt.Sprintf("%s is set by sandq and cannot be overridden", k)}
			}
		}
		if strings.ContainsRune(v, 0) {
			return &FieldError{Field: "env", Msg: fmt.Sprintf("value of %s contains NUL", k)}
		}
		total += len(k) + len(v) + 2
	}
	if total > maxBytes {
		return &FieldError{Field: "env", Msg: fmt.Sprintf("%d bytes is over the maximum of %d", total, maxBytes)}
	}
	return nil
}

// CheckArgs refuses arguments with NUL and too many or too long arguments.
func CheckArgs(args []string, maxArgs, maxBytes int) error {
	if len(args) > maxArgs {
		return &FieldError{Field: "args", Msg: fmt.Sprintf("%d arguments is over the maximum of %d", len(args), maxArgs)}
	}
	total := 0
	for i, a := range args {
		if strings.ContainsRune(a, 0) {
			return &FieldError{Field: "args", Msg: fmt.Sprintf("argument %d contains NUL", i+1)}
		}
		total += len(a) + 1
	}
	if total > maxBytes {
		return &FieldError{Field: "args", Msg: fmt.Sprintf("%d bytes is over the maximum of %d", total, maxBytes)}
	}
	return nil
}

var queueName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// CheckQueue refuses queue names that are not simple identifiers.
func CheckQueue(q string) error {
	if !queueName.MatchString(q) {
		return &FieldError{Field: "queue", Msg: fmt.Sprintf("%q is not a valid queue name (letters, digits, _ . -, at most 64)", q)}
	}
	return nil
}

// CheckIdempotencyKey bounds idempotency keys.
func CheckIdempotencyKey(k string) error {
	if len(k) > 256 || !utf8.ValidString(k) || strings.ContainsRune(k, 0) {
		return &FieldError{Field: "idempotency_key", Msg: "must be valid UTF-8 without NUL, at most 256 bytes"}
	}
	return nil
}
