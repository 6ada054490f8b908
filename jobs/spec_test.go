package jobs

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"
)

// checkFieldError fails the test unless err is a *FieldError for field whose
// message contains every one of want (case-sensitive).
func checkFieldError(t *testing.T, err error, field string, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want a *FieldError for %q", field)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("got %T (%v), want *FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("Field = %q, want %q (error: %v)", fe.Field, field, err)
	}
	for _, w := range want {
		if !strings.Contains(fe.Msg, w) {
			t.Errorf("Msg = %q, want it to contain %q", fe.Msg, w)
		}
	}
	if got, wantPrefix := err.Error(), field+": "; !strings.HasPrefix(got, wantPrefix) {
		t.Errorf("Error() = %q, want prefix %q", got, wantPrefix)
	}
}

func TestResolveRuntime(t *testing.T) {
	tests := []struct {
		asked, script string
		want          string
	}{
		// Names and aliases, in any case; the extension does not matter then.
		{"python", "x.sh", RuntimePython},
		{"python3", "", RuntimePython},
		{"py", "x", RuntimePython},
		{"PYTHON3", "x.js", RuntimePython},
		{"node", "x.py", RuntimeNode},
		{"nodejs", "x", RuntimeNode},
		{"javascript", "x", RuntimeNode},
		{"js", "x", RuntimeNode},
		{"JS", "x", RuntimeNode},
		{"Js", "x", RuntimeNode},
		{"shell", "x", RuntimeShell},
		{"sh", "x", RuntimeShell},
		{"bash", "x.py", RuntimeShell},
		{"BASH", "x", RuntimeShell},
		// Extensions, in any case, also under directories.
		{"", "main.py", RuntimePython},
		{"", "MAIN.PY", RuntimePython},
		{"", "dir/sub/main.py", RuntimePython},
		{"", "app.js", RuntimeNode},
		{"", "app.mjs", RuntimeNode},
		{"", "app.cjs", RuntimeNode},
		{"", "run.sh", RuntimeShell},
		{"", "run.bash", RuntimeShell},
		{"", "archive.tar.sh", RuntimeShell},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.asked, tt.script), func(t *testing.T) {
			got, err := ResolveRuntime(tt.asked, tt.script)
			if err != nil {
				t.Fatalf("ResolveRuntime(%q, %q): %v", tt.asked, tt.script, err)
			}
			if got != tt.want {
				t.Errorf("ResolveRuntime(%q, %q) = %q, want %q", tt.asked, tt.script, got, tt.want)
			}
			if _, ok := Interpreter(got); !ok {
				t.Errorf("runtime %q has no interpreter", got)
			}
		})
	}

	refused := []struct {
		name, asked, script string
		msg                 string
	}{
		{"unknown runtime", "ruby", "x.py", `unknown runtime "ruby"`},
		{"unknown runtime with spaces", " python", "x.py", "unknown runtime"},
		{"unknown runtime python2", "python2", "x.py", "unknown runtime"},
		{"unknown extension", "", "main.rb", `"main.rb"`},
		{"no extension", "", "Makefile", "extension"},
		{"empty script", "", "", "extension"},
		{"dot only", "", "main.", "extension"},
		{"extension of a directory", "", "dir.py/main", "extension"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveRuntime(tt.asked, tt.script)
			if got != "" {
				t.Errorf("runtime = %q, want empty on error", got)
			}
			checkFieldError(t, err, "runtime", tt.msg)
		})
	}
}

func TestCheckName(t *testing.T) {
	long255 := strings.Repeat("a", 255)
	long256 := strings.Repeat("b", 256)
	// 255*3 + 254 + 1 bytes of components and 4 slashes: exactly 1024.
	exactly1024 := strings.Join([]string{long255, long255, long255, long255[:254], "c"}, "/")
	if len(exactly1024) != 1024 {
		t.Fatalf("test setup: len = %d", len(exactly1024))
	}
	over1024 := strings.Repeat("a/", 512) + "b" // 1025 bytes of short components

	valid := []string{
		"data.csv",
		"dir/sub/file.txt",
		"données/résumé.txt",
		"日本語.txt",
		"emoji-😀.json",
		"with space.txt",
		".hidden",
		"..dots",
		"a..b",
		"...",
		"x",
		long255,
		"d/" + long255,
		exactly1024,
	}
	for _, n := range valid {
		t.Run("valid/"+short(n), func(t *testing.T) {
			if err := CheckName("inputs", n); err != nil {
				t.Errorf("CheckName(%q): %v", n, err)
			}
		})
	}

	invalid := []struct {
		name, in, msg string
	}{
		{"empty", "", "empty name"},
		{"absolute", "/etc/passwd", "is absolute"},
		{"root", "/", "is absolute"},
		{"dotdot", "../x", ". or .. component"},
		{"dotdot only", "..", ". or .. component"},
		{"dotdot inside", "a/../b", ". or .. component"},
		{"dotdot at end", "a/..", ". or .. component"},
		{"dot", "./a", ". or .. component"},
		{"dot only", ".", ". or .. component"},
		{"dot inside", "a/./b", ". or .. component"},
		{"double slash", "a//b", "empty path component"},
		{"trailing slash", "a/", "empty path component"},
		{"backslash", `a\b`, "backslash"},
		{"backslash dotdot", `..\x`, "backslash"},
		{"NUL", "a\x00b", "contains NUL"},
		{"newline", "a\nb", "control character"},
		{"carriage return", "a\rb", "control character"},
		{"tab", "a\tb", "control character"},
		{"DEL", "a\x7fb", "control character"},
		{"C1 control", "a\u0085b", "control character"},
		{"component of 256 bytes", long256, "component over 255 bytes"},
		{"nested component of 256 bytes", "dir/" + long256 + "/x", "component over 255 bytes"},
		{"over 1024 bytes", over1024, "1025 bytes is over the maximum of 1024"},
		{"over 1024 bytes by one", exactly1024 + "x", "over the maximum of 1024"},
		{"invalid UTF-8", "bad\xff.txt", "not valid UTF-8"},
		{"truncated UTF-8", "caf\xc3", "not valid UTF-8"},
		{"overlong UTF-8 slash", "a\xc0\xafb", "not valid UTF-8"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			for _, field := range []string{"inputs", "script"} {
				checkFieldError(t, CheckName(field, tt.in), field, tt.msg)
			}
		})
	}
}

// short names a subtest after a possibly long name.
func short(s string) string {
	if len(s) > 20 {
		return fmt.Sprintf("%s...(%d bytes)", s[:10], len(s))
	}
	return s
}

func TestCheckNames(t *testing.T) {
	valid := []struct {
		name  string
		names []string
	}{
		{"none", nil},
		{"one", []string{"data.csv"}},
		{"set", []string{"data.csv", "dir/a.txt", "dir/b.txt", "dir/sub/c.txt", "dira", "dir.txt", "other/dir"}},
		{"siblings sharing a prefix", []string{"a/b", "a/bc", "ab/c", "a-b"}},
		{"unicode", []string{"é/1", "e/1", "ê"}},
	}
	for _, tt := range valid {
		t.Run("valid/"+tt.name, func(t *testing.T) {
			if err := CheckNames("inputs", tt.names); err != nil {
				t.Errorf("CheckNames(%q): %v", tt.names, err)
			}
		})
	}

	invalid := []struct {
		name  string
		names []string
		msg   []string
	}{
		{"duplicate", []string{"data.csv", "x", "data.csv"}, []string{`"data.csv" and "data.csv" collide`}},
		{"case only", []string{"Data.csv", "data.csv"}, []string{`"Data.csv" and "data.csv" collide`}},
		{"case only in directory", []string{"Dir/a", "dir/a"}, []string{"collide"}},
		{"file and its directory", []string{"a", "a/b"}, []string{`"a"`, `"a/b"`, "directory"}},
		{"directory and file, reversed", []string{"a/b", "a"}, []string{`"a"`, `"a/b"`, "directory"}},
		{"file and a deep descendant", []string{"x/y", "x/y/z/w"}, []string{`"x/y"`, `"x/y/z/w"`, "directory"}},
		{"file and directory differing in case", []string{"A", "a/b"}, []string{`"A"`, `"a/b"`, "directory"}},
		{"an invalid name", []string{"ok.txt", "../x"}, []string{`"../x"`, ". or .. component"}},
		{"an empty name", []string{"ok.txt", ""}, []string{"empty name"}},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			checkFieldError(t, CheckNames("inputs", tt.names), "inputs", tt.msg...)
		})
	}

	t.Run("does not reorder the caller's slice", func(t *testing.T) {
		names := []string{"z", "b", "a"}
		if err := CheckNames("inputs", names); err != nil {
			t.Fatal(err)
		}
		if strings.Join(names, ",") != "z,b,a" {
			t.Errorf("names = %q, want them untouched", names)
		}
	})
}

func TestCheckEnv(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		maxVars  int
		maxBytes int
		msg      string // empty: valid
	}{
		{"nil", nil, 0, 0, ""},
		{"valid", map[string]string{"A": "1", "_x": "", "PATH_2": "a=b c", "lower": "ü"}, 4, 1000, ""},
		{"exact byte cap", map[string]string{"A": "xx"}, 1, 5, ""}, // 1+2+2
		{"exact variable cap", map[string]string{"A": "", "B": ""}, 2, 100, ""},
		{"starts with digit", map[string]string{"1A": "x"}, 10, 1000, `name "1A" is not a valid variable name`},
		{"dash", map[string]string{"A-B": "x"}, 10, 1000, `name "A-B"`},
		{"empty name", map[string]string{"": "x"}, 10, 1000, `name ""`},
		{"equals in name", map[string]string{"A=B": "x"}, 10, 1000, `name "A=B"`},
		{"space in name", map[string]string{"A B": "x"}, 10, 1000, `name "A B"`},
		{"non-ASCII name", map[string]string{"É": "x"}, 10, 1000, "not a valid variable name"},
		{"reserved INPUT_DIR", map[string]string{"INPUT_DIR": "/x"}, 10, 1000, "INPUT_DIR is set by sandq"},
		{"reserved OUTPUT_DIR", map[string]string{"OUTPUT_DIR": "/x"}, 10, 1000, "OUTPUT_DIR is set by sandq"},
		{"reserved lower case", map[string]string{"input_dir": "/x"}, 10, 1000, "input_dir is set by sandq"},
		{"reserved mixed case", map[string]string{"Output_Dir": "/x"}, 10, 1000, "Output_Dir is set by sandq"},
		{"NUL in value", map[string]string{"A": "x\x00y"}, 10, 1000, "value of A contains NUL"},
		{"too many variables", map[string]string{"A": "", "B": "", "C": ""}, 2, 1000, "3 variables is over the maximum of 2"},
		{"too many bytes", map[string]string{"A": "xx"}, 1, 4, "5 bytes is over the maximum of 4"},
		{"too many bytes in all", map[string]string{"AA": strings.Repeat("v", 50), "BB": strings.Repeat("v", 50)}, 2, 107, "108 bytes is over the maximum of 107"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckEnv(tt.env, tt.maxVars, tt.maxBytes)
			if tt.msg == "" {
				if err != nil {
					t.Errorf("CheckEnv(%q): %v", tt.env, err)
				}
				return
			}
			checkFieldError(t, err, "env", tt.msg)
		})
	}

	t.Run("first bad name reported deterministically", func(t *testing.T) {
		env := map[string]string{"B-": "", "A-": "", "C-": ""}
		for range 20 {
			checkFieldError(t, CheckEnv(env, 10, 1000), "env", `name "A-"`)
		}
	})
}

func TestCheckArgs(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		maxArgs  int
		maxBytes int
		msg      string // empty: valid
	}{
		{"none", nil, 0, 0, ""},
		{"valid", []string{"--flag", "", "ü", "a b"}, 4, 100, ""},
		{"exact byte cap", []string{"ab", "c"}, 2, 5, ""}, // 3+2
		{"NUL", []string{"ok", "a\x00b"}, 10, 100, "argument 2 contains NUL"},
		{"too many", []string{"a", "b", "c"}, 2, 100, "3 arguments is over the maximum of 2"},
		{"too many bytes", []string{"ab", "c"}, 2, 4, "5 bytes is over the maximum of 4"},
		{"too many bytes, empty args count", []string{"", "", ""}, 3, 2, "3 bytes is over the maximum of 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckArgs(tt.args, tt.maxArgs, tt.maxBytes)
			if tt.msg == "" {
				if err != nil {
					t.Errorf("CheckArgs(%q): %v", tt.args, err)
				}
				return
			}
			checkFieldError(t, err, "args", tt.msg)
		})
	}
}

func TestCheckQueue(t *testing.T) {
	tests := []struct {
		q  string
		ok bool
	}{
		{"default", true},
		{"a", true},
		{"0", true},
		{"high-priority", true},
		{"gpu_v1.2", true},
		{"Q" + strings.Repeat("x", 63), true}, // 64 bytes
		{"Q" + strings.Repeat("x", 64), false},
		{"", false},
		{"-a", false},
		{"_a", false},
		{".a", false},
		{"a b", false},
		{"a/b", false},
		{"a:b", false},
		{"a\x00", false},
		{"a\n", false},
		{"é", false},
	}
	for _, tt := range tests {
		t.Run(short(tt.q), func(t *testing.T) {
			err := CheckQueue(tt.q)
			if tt.ok {
				if err != nil {
					t.Errorf("CheckQueue(%q): %v", tt.q, err)
				}
				return
			}
			checkFieldError(t, err, "queue", fmt.Sprintf("%q is not a valid queue name", tt.q))
		})
	}
}

func TestCheckIdempotencyKey(t *testing.T) {
	tests := []struct {
		name string
		k    string
		ok   bool
	}{
		{"empty", "", true},
		{"simple", "order-1234", true},
		{"unicode", "clé-ключ-鍵", true},
		{"256 bytes", strings.Repeat("k", 256), true},
		{"257 bytes", strings.Repeat("k", 257), false},
		{"NUL", "a\x00b", false},
		{"invalid UTF-8", "a\xffb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckIdempotencyKey(tt.k)
			if tt.ok {
				if err != nil {
					t.Errorf("CheckIdempotencyKey(%q): %v", tt.k, err)
				}
				return
			}
			checkFieldError(t, err, "idempotency_key", "at most 256 bytes")
		})
	}
}

func TestLimitRequestResolve(t *testing.T) {
	def := Limits{Timeout: 5 * time.Minute, Memory: 2 << 30, Disk: 2 << 30, OutputBytes: 512 << 20, OutputFiles: 1000, CPUs: 1}
	max := Limits{Timeout: time.Hour, Memory: 8 << 30, Disk: 10 << 30, OutputBytes: 2 << 30, OutputFiles: 10000, CPUs: 4}

	ok := []struct {
		name string
		req  LimitRequest
		want Limits
	}{
		{"zero takes defaults", LimitRequest{}, def},
		{"timeout", LimitRequest{TimeoutSeconds: 90}, Limits{90 * time.Second, def.Memory, def.Disk, def.OutputBytes, def.OutputFiles, def.CPUs}},
		{"fractional timeout", LimitRequest{TimeoutSeconds: 1.5}, Limits{1500 * time.Millisecond, def.Memory, def.Disk, def.OutputBytes, def.OutputFiles, def.CPUs}},
		{"memory", LimitRequest{MemoryBytes: 256 << 20}, Limits{def.Timeout, 256 << 20, def.Disk, def.OutputBytes, def.OutputFiles, def.CPUs}},
		{"disk", LimitRequest{DiskBytes: 5 << 30}, Limits{def.Timeout, def.Memory, 5 << 30, def.OutputBytes, def.OutputFiles, def.CPUs}},
		{"output bytes", LimitRequest{OutputBytes: 4096}, Limits{def.Timeout, def.Memory, def.Disk, 4096, def.OutputFiles, def.CPUs}},
		{"output files", LimitRequest{OutputFiles: 1}, Limits{def.Timeout, def.Memory, def.Disk, def.OutputBytes, 1, def.CPUs}},
		{"all at the maxima", LimitRequest{3600, 8 << 30, 10 << 30, 2 << 30, 10000, ptr(4.0)}, max},
		{"all at the minima", LimitRequest{1, MinMemory, MinDisk, 4096, 1, ptr(MinCPUs)}, Limits{time.Second, MinMemory, MinDisk, 4096, 1, MinCPUs}},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.req.Resolve(def, max)
			if err != nil {
				t.Fatalf("Resolve(%+v): %v", tt.req, err)
			}
			if got != tt.want {
				t.Errorf("Resolve(%+v) = %+v, want %+v", tt.req, got, tt.want)
			}
		})
	}

	refused := []struct {
		name  string
		req   LimitRequest
		field string
		msg   string
	}{
		{"timeout over max", LimitRequest{TimeoutSeconds: 3601}, "timeout", "over the maximum of 1h0m0s"},
		{"memory over max", LimitRequest{MemoryBytes: 8<<30 + 1}, "memory", "over the maximum of 8GiB"},
		{"disk over max", LimitRequest{DiskBytes: 11 << 30}, "disk", "11GiB is over the maximum of 10GiB"},
		{"output size over max", LimitRequest{OutputBytes: 3 << 30}, "output_size", "3GiB is over the maximum of 2GiB"},
		{"output files over max", LimitRequest{OutputFiles: 10001}, "output_files", "10001 is over the maximum of 10000"},
		{"negative timeout", LimitRequest{TimeoutSeconds: -1}, "limits", "negative"},
		{"negative memory", LimitRequest{MemoryBytes: -1}, "limits", "negative"},
		{"negative disk", LimitRequest{DiskBytes: -1}, "limits", "negative"},
		{"negative output bytes", LimitRequest{OutputBytes: -1}, "limits", "negative"},
		{"negative output files", LimitRequest{OutputFiles: -1}, "limits", "negative"},
		{"timeout under 1s", LimitRequest{TimeoutSeconds: 0.5}, "timeout", "500ms is under the minimum of 1s"},
		{"timeout of one nanosecond", LimitRequest{TimeoutSeconds: 1e-9}, "timeout", "under the minimum"},
		{"timeout that overflows a Duration", LimitRequest{TimeoutSeconds: 1e12}, "timeout", ""},
		{"timeout of +Inf", LimitRequest{TimeoutSeconds: math.Inf(1)}, "timeout", ""},
		{"memory under 64MiB", LimitRequest{MemoryBytes: MinMemory - 1}, "memory", "under the minimum of 64MiB"},
		{"disk under 16MiB", LimitRequest{DiskBytes: MinDisk - 1}, "disk", "under the minimum of 16MiB"},
		{"output size under 4KiB", LimitRequest{OutputBytes: 4095}, "output_size", "under the minimum of 4KiB"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.req.Resolve(def, max)
			t.Logf("Resolve(%+v): %v", tt.req, err)
			if got != (Limits{}) {
				t.Errorf("limits = %+v, want zero on error", got)
			}
			checkFieldError(t, err, tt.field, tt.msg)
		})
	}

	// A timeout too large for a time.Duration is compared before the
	// conversion, which would overflow.
	t.Run("huge timeout is reported as over the maximum", func(t *testing.T) {
		for _, secs := range []float64{1e12, math.Inf(1)} {
			_, err := LimitRequest{TimeoutSeconds: secs}.Resolve(def, max)
			checkFieldError(t, err, "timeout", "over the maximum")
		}
	})

	t.Run("defaults over the maxima are refused too", func(t *testing.T) {
		bad := def
		bad.Timeout = 2 * time.Hour
		_, err := LimitRequest{}.Resolve(bad, max)
		checkFieldError(t, err, "timeout", "over the maximum")
	})
}

func TestParseSize(t *testing.T) {
	ok := []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"1024", 1024},
		{"1024B", 1024},
		{"1 B", 1},
		{"1KiB", 1 << 10},
		{"1K", 1 << 10},
		{"1Ki", 1 << 10},
		{"1KB", 1000},
		{"512MiB", 512 << 20},
		{"512M", 512 << 20},
		{"512Mi", 512 << 20},
		{"5MB", 5_000_000},
		{"1.5GiB", 3 << 29},
		{"2G", 2 << 30},
		{"2Gi", 2 << 30},
		{"1GB", 1_000_000_000},
		{"1TiB", 1 << 40},
		{"1T", 1 << 40},
		{"2TB", 2_000_000_000_000},
		{" 3 MiB ", 3 << 20},
		{"\t4KiB\n", 4 << 10},
		{"0.5KiB", 512},
		{"1e3", 1000},
		{"1e3KiB", 1000 << 10},
	}
	for _, tt := range ok {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if err != nil {
				t.Fatalf("ParseSize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}

	bad := []struct {
		in, msg string
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"abc", "non-negative number"},
		{"-1", "non-negative number"},
		{"-1KiB", "non-negative number"},
		{"1XB", "non-negative number"},
		{"KiB", "non-negative number"},
		{"NaN", "non-negative number"},
		{"NaNKiB", "non-negative number"},
		{"Inf", "non-negative number"},
		{"+Inf", "non-negative number"},
		{"1 2", "non-negative number"},
		{"1KiBKiB", "non-negative number"},
		{"10000000TiB", "too large"},
		{"1e30", "too large"},
	}
	for _, tt := range bad {
		t.Run("bad/"+tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if err == nil {
				t.Fatalf("ParseSize(%q) = %d, want an error", tt.in, got)
			}
			if got != 0 {
				t.Errorf("ParseSize(%q) = %d with error, want 0", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.in)) {
				t.Errorf("ParseSize(%q) error = %q, want it to quote the input and contain %q", tt.in, err, tt.msg)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1023, "1023B"},
		{1024, "1KiB"},
		{1536, "1.5KiB"},
		{4096, "4KiB"},
		{1<<20 + 1, "1.0MiB"},
		{3 << 19, "1536KiB"},
		{512 << 20, "512MiB"},
		{2 << 30, "2GiB"},
		{3 << 29, "1536MiB"},
		{1 << 40, "1TiB"},
		{1<<40 + 1<<30, "1025GiB"},
		{5 << 40, "5TiB"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := FormatSize(tt.n); got != tt.want {
				t.Errorf("FormatSize(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}

	t.Run("round trip", func(t *testing.T) {
		sizes := []int64{0, 1, 7, 1023, 1 << 10, 3 << 10, 1 << 20, 64 << 20, 1<<20 + 1<<10, 1 << 30, 2 << 30, 10 << 30, 1<<30 + 1<<20, 1 << 40, 3 << 40, 1<<40 + 1<<30}
		for _, n := range sizes {
			s := FormatSize(n)
			got, err := ParseSize(s)
			if err != nil {
				t.Errorf("ParseSize(FormatSize(%d) = %q): %v", n, s, err)
				continue
			}
			if got != n {
				t.Errorf("ParseSize(FormatSize(%d) = %q) = %d", n, s, got)
			}
		}
	})
}

func TestIdempotentJobID(t *testing.T) {
	a := IdempotentJobID("", "default", "order-1")
	if b := IdempotentJobID("", "default", "order-1"); a != b {
		t.Fatalf("not deterministic: %q then %q", a, b)
	}
	if !regexp.MustCompile(`^k-[0-9a-f]{32}$`).MatchString(a) {
		t.Errorf("IdempotentJobID = %q, want k- and 32 lower-case hex digits", a)
	}
	// Direct producers keep the IDs of before the tenant was part of them.
	if a != "k-d79c5e3882b78fd1a6b226e98964e0d8" {
		t.Errorf("a direct producer's ID changed: %q", a)
	}

	triples := []struct{ tenant, q, k string }{
		{"", "default", "order-1"},
		{"", "default", "order-2"},
		{"", "other", "order-1"},
		{"", "default", ""},
		{"", "", "default"},
		{"", "defaultorder-1", ""},
		{"", "default", "Order-1"},
		{"", "default", "order-1 "},
		// The tenant is part of the ID: two tenants' keys never meet, nor
		// a tenant's and a direct producer's.
		{"acme", "default", "order-1"},
		{"beta", "default", "order-1"},
		{"acme", "other", "order-1"},
		{"acme", "default", "order-2"},
		{"acmedefault", "", "order-1"},
		{"tenant", "acme", "default"},
		{"default", "order-1", ""},
	}
	seen := map[string]int{}
	for i, p := range triples {
		id := IdempotentJobID(p.tenant, p.q, p.k)
		if err := CheckJobID(id); err != nil {
			t.Errorf("IdempotentJobID(%q, %q, %q) = %q: %v", p.tenant, p.q, p.k, id, err)
		}
		if j, ok := seen[id]; ok {
			t.Errorf("IdempotentJobID(%q, %q, %q) = IdempotentJobID(%q, %q, %q) = %q", p.tenant, p.q, p.k, triples[j].tenant, triples[j].q, triples[j].k, id)
		}
		seen[id] = i
		if id == NewJobID() {
			t.Errorf("collided with a random ID")
		}
	}
	if err := CheckJobID(NewJobID()); err != nil {
		t.Errorf("NewJobID: %v", err)
	}
}

func TestScriptNamesOfSandqsOwnFilesAreRefused(t *testing.T) {
	for _, name := range []string{".sandq-site", ".sandq-launch", ".sandq-x/job.py"} {
		var fe *FieldError
		if err := checkScriptName(name); !errors.As(err, &fe) || fe.Field != "script" || !strings.Contains(fe.Msg, ReservedPrefix) {
			t.Errorf("script %q: %v, want a refusal of field script naming %s", name, err, ReservedPrefix)
		}
	}
	for _, name := range []string{"job.py", "x/.sandq-site.py", "sandq-site.py"} {
		if err := checkScriptName(name); err != nil {
			t.Errorf("script %q refused: %v", name, err)
		}
	}
}
