package executor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// hostFile is a file outside every outputs directory whose bytes must never
// be served: /etc/hostname as the brief names it, else a file of our own.
func hostFile(t *testing.T) (string, []byte) {
	t.Helper()
	if b, err := os.ReadFile("/etc/hostname"); err == nil && len(b) >= 3 {
		return "/etc/hostname", b
	}
	p := filepath.Join(t.TempDir(), "hostname")
	b := []byte("secret-host\n")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fixture is an outputs directory holding regular files and every kind of
// entry that must not be collected.
type fixture struct {
	root     string
	outside  string // a directory beside root, with secret.txt in it
	host     string
	hostData []byte
	contents map[string][]byte // regular files by relative path
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	base := t.TempDir()
	f := &fixture{root: filepath.Join(base, "out"), outside: filepath.Join(base, "outside"), contents: map[string][]byte{}}
	f.host, f.hostData = hostFile(t)

	files := map[string][]byte{
		"a.txt":         []byte("hello"),
		"dir/b.txt":     []byte("0123456789"),
		"dir/sub/c.bin": {},
		"dir/sub/d.dat": {1, 2, 3},
		// Same size as the host file, so only refusing links protects it.
		"same.txt": bytes.Repeat([]byte("x"), len(f.hostData)),
	}
	for rel, data := range files {
		writeFile(t, filepath.Join(f.root, rel), data)
		f.contents[rel] = data
	}
	if err := os.MkdirAll(filepath.Join(f.root, "empty-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.outside, "secret.txt"), []byte("top secret"))

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(f.host, filepath.Join(f.root, "link-host")))
	must(os.Symlink(f.outside, filepath.Join(f.root, "link-dir")))
	must(os.Symlink("../a.txt", filepath.Join(f.root, "dir", "link-rel")))
	must(os.Symlink("missing", filepath.Join(f.root, "dangling")))
	must(unix.Mkfifo(filepath.Join(f.root, "fifo"), 0o600))
	ln, err := net.Listen("unix", filepath.Join(f.root, "sock"))
	must(err)
	// Closing the listener removes the socket file: keep it until the end.
	t.Cleanup(func() { ln.Close() })
	writeFile(t, filepath.Join(f.root, "bad\xff.txt"), []byte("bad name"))
	writeFile(t, filepath.Join(f.root, "baddir\xfe", "inner.txt"), []byte("inside a badly named directory"))
	return f
}

func TestCollectOutputs(t *testing.T) {
	f := newFixture(t)
	c, err := CollectOutputs(f.root, 1000, 1<<30)
	if err != nil {
		t.Fatalf("CollectOutputs: %v", err)
	}

	wantFiles := []OutputFile{
		{"a.txt", 5},
		{"dir/b.txt", 10},
		{"dir/sub/c.bin", 0},
		{"dir/sub/d.dat", 3},
		{"same.txt", int64(len(f.hostData))},
	}
	if !reflect.DeepEqual(c.Files, wantFiles) {
		t.Errorf("Files = %+v\nwant    %+v", c.Files, wantFiles)
	}
	if want := int64(18 + len(f.hostData)); c.TotalBytes != want {
		t.Errorf("TotalBytes = %d, want %d", c.TotalBytes, want)
	}

	wantSkipped := map[string]SkippedOutput{
		"link-host":    {"link-host", "symlink", "not a regular file"},
		"link-dir":     {"link-dir", "symlink", "not a regular file"},
		"dir/link-rel": {"dir/link-rel", "symlink", "not a regular file"},
		"dangling":     {"dangling", "symlink", "not a regular file"},
		"fifo":         {"fifo", "fifo", "not a regular file"},
		"sock":         {"sock", "socket", "not a regular file"},
		`bad\xff.txt`:  {`bad\xff.txt`, "file", "name is not valid UTF-8 (path shown escaped)"},
		`baddir\xfe`:   {`baddir\xfe`, "directory", "name is not valid UTF-8 (path shown escaped)"},
	}
	got := map[string]SkippedOutput{}
	for _, s := range c.Skipped {
		if _, dup := got[s.Path]; dup {
			t.Errorf("%q skipped twice", s.Path)
		}
		got[s.Path] = s
	}
	if !reflect.DeepEqual(got, wantSkipped) {
		t.Errorf("Skipped:")
		for _, s := range c.Skipped {
			t.Errorf("  got  %+q", s)
		}
		for _, s := range wantSkipped {
			t.Errorf("  want %+q", s)
		}
	}
	for _, s := range c.Skipped {
		if strings.Contains(s.Path, "inner.txt") || strings.Contains(s.Path, "secret") {
			t.Errorf("walked into %q", s.Path)
		}
	}
}

func TestCollectOutputsCaps(t *testing.T) {
	f := newFixture(t)
	n := int64(len(f.hostData))
	fileCap := func(n int) SkippedOutput {
		return SkippedOutput{Type: "file", Reason: "over the output file cap (" + strconv.Itoa(n) + ")"}
	}
	sizeCap := func(n int64) SkippedOutput {
		return SkippedOutput{Type: "file", Reason: "over the output size cap (" + strconv.FormatInt(n, 10) + " bytes)"}
	}
	tests := []struct {
		name     string
		maxFiles int
		maxBytes int64
		files    []string
		capped   map[string]SkippedOutput // Path filled in below
	}{
		{"no caps reached", 5, 18 + n, []string{"a.txt", "dir/b.txt", "dir/sub/c.bin", "dir/sub/d.dat", "same.txt"}, nil},
		{"file cap", 2, 1 << 30, []string{"a.txt", "dir/b.txt"}, map[string]SkippedOutput{
			"dir/sub/c.bin": fileCap(2), "dir/sub/d.dat": fileCap(2), "same.txt": fileCap(2),
		}},
		{"no files", 0, 1 << 30, nil, map[string]SkippedOutput{
			"a.txt": fileCap(0), "dir/b.txt": fileCap(0), "dir/sub/c.bin": fileCap(0), "dir/sub/d.dat": fileCap(0), "same.txt": fileCap(0),
		}},
		// b.txt (10) would bring the total to 15; later, smaller files still
		// fit, until same.txt (at least 3) would bring it over 10.
		{"size cap", 1000, 10, []string{"a.txt", "dir/sub/c.bin", "dir/sub/d.dat"}, map[string]SkippedOutput{
			"dir/b.txt": sizeCap(10), "same.txt": sizeCap(10),
		}},
		{"size cap of zero keeps empty files", 1000, 0, []string{"dir/sub/c.bin"}, map[string]SkippedOutput{
			"a.txt": sizeCap(0), "dir/b.txt": sizeCap(0), "dir/sub/d.dat": sizeCap(0), "same.txt": sizeCap(0),
		}},
		{"size cap exactly reached", 1000, 18, []string{"a.txt", "dir/b.txt", "dir/sub/c.bin", "dir/sub/d.dat"}, map[string]SkippedOutput{
			"same.txt": sizeCap(18),
		}},
	}
	special := map[string]bool{"link-host": true, "link-dir": true, "dir/link-rel": true, "dangling": true, "fifo": true, "sock": true, `bad\xff.txt`: true, `baddir\xfe`: true}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := CollectOutputs(f.root, tt.maxFiles, tt.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			var total int64
			for _, o := range c.Files {
				paths = append(paths, o.Path)
				if o.Size != int64(len(f.contents[o.Path])) {
					t.Errorf("%s: size %d, want %d", o.Path, o.Size, len(f.contents[o.Path]))
				}
				total += o.Size
			}
			if !reflect.DeepEqual(paths, tt.files) {
				t.Errorf("Files = %q, want %q", paths, tt.files)
			}
			if total != c.TotalBytes || total > tt.maxBytes || len(c.Files) > tt.maxFiles {
				t.Errorf("TotalBytes = %d (sum %d), %d files; caps %d bytes, %d files", c.TotalBytes, total, len(c.Files), tt.maxBytes, tt.maxFiles)
			}
			capped := map[string]SkippedOutput{}
			for _, s := range c.Skipped {
				if special[s.Path] {
					continue
				}
				capped[s.Path] = SkippedOutput{Type: s.Type, Reason: s.Reason}
			}
			if len(capped) == 0 {
				capped = nil
			}
			if !reflect.DeepEqual(capped, tt.capped) {
				t.Errorf("capped = %+v\nwant     %+v", capped, tt.capped)
			}
			if len(c.Skipped)-len(capped) != len(special) {
				t.Errorf("%d skipped, want the %d special entries and %d capped", len(c.Skipped), len(special), len(capped))
			}
		})
	}
}

func TestCollectOutputsErrors(t *testing.T) {
	t.Run("missing root", func(t *testing.T) {
		if c, err := CollectOutputs(filepath.Join(t.TempDir(), "nope"), 10, 100); err == nil {
			t.Errorf("CollectOutputs of a missing directory = %+v, want an error", c)
		}
	})
	t.Run("empty root", func(t *testing.T) {
		c, err := CollectOutputs(t.TempDir(), 10, 100)
		if err != nil || len(c.Files) != 0 || len(c.Skipped) != 0 || c.TotalBytes != 0 {
			t.Errorf("CollectOutputs(empty) = %+v, %v", c, err)
		}
	})
}

// openNoBlock calls c.Open and fails the test if it takes more than a few
// seconds (a FIFO opened for reading without O_NONBLOCK would wait for a
// writer forever).
func openNoBlock(t *testing.T, c *Collection, o OutputFile) (*os.File, error) {
	t.Helper()
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		f, err := c.Open(o)
		done <- result{f, err}
	}()
	select {
	case r := <-done:
		return r.f, r.err
	case <-time.After(5 * time.Second):
		t.Fatalf("Open(%q) blocked", o.Path)
		return nil, nil
	}
}

func findFile(t *testing.T, c *Collection, rel string) OutputFile {
	t.Helper()
	for _, o := range c.Files {
		if o.Path == rel {
			return o
		}
	}
	t.Fatalf("%q not collected", rel)
	return OutputFile{}
}

func TestCollectionOpen(t *testing.T) {
	t.Run("listed files", func(t *testing.T) {
		f := newFixture(t)
		c, err := CollectOutputs(f.root, 1000, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range c.Files {
			file, err := openNoBlock(t, c, o)
			if err != nil {
				t.Errorf("Open(%q): %v", o.Path, err)
				continue
			}
			got, err := io.ReadAll(file)
			file.Close()
			if err != nil {
				t.Errorf("read %q: %v", o.Path, err)
			}
			if !bytes.Equal(got, f.contents[o.Path]) {
				t.Errorf("%q = %q, want %q", o.Path, got, f.contents[o.Path])
			}
		}
	})

	// Each case changes the outputs directory after listing, then opens rel.
	refused := []struct {
		name   string
		rel    string
		change func(t *testing.T, f *fixture)
	}{
		{"file replaced by a symlink to the host file", "same.txt", func(t *testing.T, f *fixture) {
			replace(t, filepath.Join(f.root, "same.txt"), func(p string) error { return os.Symlink(f.host, p) })
		}},
		{"file replaced by a relative symlink to another output", "a.txt", func(t *testing.T, f *fixture) {
			writeFile(t, filepath.Join(f.root, "five.txt"), []byte("other"))
			replace(t, filepath.Join(f.root, "a.txt"), func(p string) error { return os.Symlink("five.txt", p) })
		}},
		{"file replaced by a FIFO", "a.txt", func(t *testing.T, f *fixture) {
			replace(t, filepath.Join(f.root, "a.txt"), func(p string) error { return unix.Mkfifo(p, 0o666) })
		}},
		{"empty file replaced by a FIFO", "dir/sub/c.bin", func(t *testing.T, f *fixture) {
			replace(t, filepath.Join(f.root, "dir/sub/c.bin"), func(p string) error { return unix.Mkfifo(p, 0o666) })
		}},
		{"file replaced by a directory", "a.txt", func(t *testing.T, f *fixture) {
			replace(t, filepath.Join(f.root, "a.txt"), func(p string) error { return os.Mkdir(p, 0o755) })
		}},
		{"file replaced by one of another size", "a.txt", func(t *testing.T, f *fixture) {
			replace(t, filepath.Join(f.root, "a.txt"), func(p string) error { return os.WriteFile(p, []byte("longer now"), 0o644) })
		}},
		{"file removed", "a.txt", func(t *testing.T, f *fixture) {
			if err := os.Remove(filepath.Join(f.root, "a.txt")); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory replaced by a symlink outside", "dir/b.txt", func(t *testing.T, f *fixture) {
			// Move the directory out, same names and sizes, and link to it.
			moved := filepath.Join(f.outside, "dir")
			if err := os.Rename(filepath.Join(f.root, "dir"), moved); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(moved, filepath.Join(f.root, "dir")); err != nil {
				t.Fatal(err)
			}
		}},
		{"deeper directory replaced by a symlink outside", "dir/sub/d.dat", func(t *testing.T, f *fixture) {
			moved := filepath.Join(f.outside, "sub")
			if err := os.Rename(filepath.Join(f.root, "dir", "sub"), moved); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(moved, filepath.Join(f.root, "dir", "sub")); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory replaced by a symlink inside", "dir/b.txt", func(t *testing.T, f *fixture) {
			if err := os.Rename(filepath.Join(f.root, "dir"), filepath.Join(f.root, "real")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("real", filepath.Join(f.root, "dir")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			c, err := CollectOutputs(f.root, 1000, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			o := findFile(t, c, tt.rel)
			tt.change(t, f)
			file, err := openNoBlock(t, c, o)
			if err == nil {
				got, _ := io.ReadAll(file)
				file.Close()
				t.Fatalf("Open(%q) succeeded after the change and read %q", o.Path, got)
			}
			t.Logf("Open(%q): %v", o.Path, err)
			if file != nil {
				t.Errorf("Open returned a file with its error %v", err)
			}
			if !strings.Contains(err.Error(), o.Path) {
				t.Errorf("error %q does not name %q", err, o.Path)
			}
		})
	}

	// Paths that were never listed: Open must stay beneath the root even if
	// handed a crafted OutputFile.
	crafted := []struct {
		name string
		o    func(f *fixture) OutputFile
	}{
		{"parent directory", func(f *fixture) OutputFile { return OutputFile{"../outside/secret.txt", 10} }},
		{"absolute path", func(f *fixture) OutputFile { return OutputFile{f.host, int64(len(f.hostData))} }},
		{"symlink in the root", func(f *fixture) OutputFile { return OutputFile{"link-host", int64(len(f.hostData))} }},
		{"through a symlinked directory", func(f *fixture) OutputFile { return OutputFile{"link-dir/secret.txt", 10} }},
		{"relative symlink to a listed file", func(f *fixture) OutputFile { return OutputFile{"dir/link-rel", 5} }},
		{"the socket", func(f *fixture) OutputFile { return OutputFile{"sock", 0} }},
		{"the FIFO", func(f *fixture) OutputFile { return OutputFile{"fifo", 0} }},
	}
	for _, tt := range crafted {
		t.Run("crafted/"+tt.name, func(t *testing.T) {
			f := newFixture(t)
			c, err := CollectOutputs(f.root, 1000, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			o := tt.o(f)
			file, err := openNoBlock(t, c, o)
			if err == nil {
				got, _ := io.ReadAll(file)
				file.Close()
				t.Fatalf("Open(%q) succeeded and read %q", o.Path, got)
			}
			t.Logf("Open(%q): %v", o.Path, err)
		})
	}
}

// replace removes p and makes something else in its place.
func replace(t *testing.T, p string, make func(string) error) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := make(p); err != nil {
		t.Fatal(err)
	}
}

// mkdirChain makes the nested directories names under root through
// directory descriptors, so the chain may be longer than PATH_MAX, and
// returns the descriptor of the deepest one (closed when the test ends).
func mkdirChain(t *testing.T, root string, names []string) int {
	t.Helper()
	fd, err := unix.Open(root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := unix.Mkdirat(fd, n, 0o755); err != nil {
			t.Fatalf("mkdir %q: %v", n, err)
		}
		next, err := unix.Openat(fd, n, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// writeAt makes a file named name holding data in the directory fd.
func writeAt(t *testing.T, dirfd int, name string, data []byte) {
	t.Helper()
	fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, data); err != nil {
		t.Fatal(err)
	}
}

// checkShown fails the test for a skipped entry whose path could not be
// shown as is: invalid UTF-8, a control character, or over the path cap.
func checkShown(t *testing.T, c *Collection) {
	t.Helper()
	for _, s := range c.Skipped {
		if !utf8.ValidString(s.Path) || strings.ContainsFunc(s.Path, unicode.IsControl) {
			t.Errorf("skipped path %+.80q... is not shown escaped", s.Path)
			break
		}
		if len(s.Path) > MaxOutputPathBytes+len("…") {
			t.Errorf("skipped path of %d bytes shown whole (cap %d)", len(s.Path), MaxOutputPathBytes)
			break
		}
	}
	if b, err := json.Marshal(c.Skipped); err != nil || len(b) > MaxSkippedListed*(MaxOutputPathBytes+200) {
		t.Errorf("skipped list is %d bytes of JSON (%v)", len(b), err)
	}
}

func skippedByPath(c *Collection) map[string]SkippedOutput {
	m := map[string]SkippedOutput{}
	for _, s := range c.Skipped {
		m[s.Path] = s
	}
	return m
}

// TestCollectOutputsControlCharacters: names with control characters are
// skipped (a directory without walking into it), shown escaped.
func TestCollectOutputsControlCharacters(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "ok.txt"), []byte("ok"))
	writeFile(t, filepath.Join(root, "esc\x1b[31mred.txt"), []byte("x"))
	writeFile(t, filepath.Join(root, "tab\there"), []byte("x"))
	writeFile(t, filepath.Join(root, "del\x7f"), []byte("x"))
	writeFile(t, filepath.Join(root, "c1\u0085next"), []byte("x"))
	writeFile(t, filepath.Join(root, "dir\nline", "inner.txt"), []byte("inside"))
	if err := os.Symlink("/etc/hostname", filepath.Join(root, "link\r")); err != nil {
		t.Fatal(err)
	}
	c, err := CollectOutputs(root, 1000, 1<<30)
	if err != nil {
		t.Fatalf("CollectOutputs: %v", err)
	}
	if want := []OutputFile{{"ok.txt", 2}}; !reflect.DeepEqual(c.Files, want) {
		t.Errorf("Files = %+v, want %+v", c.Files, want)
	}
	const reason = "name has control characters (path shown escaped)"
	want := map[string]SkippedOutput{
		`esc\x1b[31mred.txt`: {`esc\x1b[31mred.txt`, "file", reason},
		`tab\there`:          {`tab\there`, "file", reason},
		`del\x7f`:            {`del\x7f`, "file", reason},
		`c1\u0085next`:       {`c1\u0085next`, "file", reason},
		`dir\nline`:          {`dir\nline`, "directory", reason},
		`link\r`:             {`link\r`, "symlink", reason},
	}
	if got := skippedByPath(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Skipped = %+q\nwant      %+q", c.Skipped, want)
	}
	checkShown(t, c)
}

// TestCollectOutputsDeepPaths: a chain of directories deeper than PATH_MAX,
// with a file and symlinks at the bottom, does not fail the walk: the first
// entry whose path is over the cap is skipped and not walked into.
func TestCollectOutputsDeepPaths(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "a.txt"), []byte("a"))
	var names []string
	for i := range 24 { // 24 * 256 bytes: over 4096
		names = append(names, fmt.Sprintf("%03d", i)+strings.Repeat("d", 252))
	}
	bottom := mkdirChain(t, root, names)
	writeAt(t, bottom, "bottom.txt", []byte("deep"))
	if err := unix.Symlinkat("/etc/hostname", bottom, "link"); err != nil {
		t.Fatal(err)
	}
	// Control characters at the bottom too, 255 bytes each.
	for i := range 5 {
		writeAt(t, bottom, fmt.Sprintf("%d", i)+strings.Repeat("\x1b", 254), nil)
	}
	c, err := CollectOutputs(root, 1000, 1<<30)
	if err != nil {
		t.Fatalf("CollectOutputs: %v", err)
	}
	if want := []OutputFile{{"a.txt", 1}}; !reflect.DeepEqual(c.Files, want) {
		t.Errorf("Files = %+v, want %+v", c.Files, want)
	}
	// 4 levels make 1023 bytes; the 5th is the first over 1024.
	over := strings.Join(names[:5], "/")
	shown := over[:MaxOutputPathBytes] + "…"
	want := map[string]SkippedOutput{shown: {shown, "directory", fmt.Sprintf("path of %d bytes is over the %d-byte cap", len(over), MaxOutputPathBytes)}}
	if got := skippedByPath(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Skipped = %+q\nwant      %+q", c.Skipped, want)
	}
	checkShown(t, c)
}

// TestCollectOutputsPathCap: a path of exactly the cap is collected, one
// byte more is skipped.
func TestCollectOutputsPathCap(t *testing.T) {
	root := t.TempDir()
	dir := strings.Repeat("d", 200) + "/" + strings.Repeat("e", 200) + "/" + strings.Repeat("f", 200) + "/" + strings.Repeat("g", 200)
	fit := dir + "/" + strings.Repeat("x", MaxOutputPathBytes-len(dir)-1)
	long := dir + "/" + strings.Repeat("y", MaxOutputPathBytes-len(dir))
	writeFile(t, filepath.Join(root, fit), []byte("fits"))
	writeFile(t, filepath.Join(root, long), []byte("too long"))
	c, err := CollectOutputs(root, 1000, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if want := []OutputFile{{fit, 4}}; !reflect.DeepEqual(c.Files, want) {
		t.Errorf("Files = %+v, want %+v", c.Files, want)
	}
	if len(c.Skipped) != 1 || c.Skipped[0].Path != long[:MaxOutputPathBytes]+"…" || c.Skipped[0].Type != "file" ||
		c.Skipped[0].Reason != fmt.Sprintf("path of %d bytes is over the %d-byte cap", MaxOutputPathBytes+1, MaxOutputPathBytes) {
		t.Errorf("Skipped = %+q", c.Skipped)
	}
	checkShown(t, c)
}

// TestCollectOutputsSkippedListIsCapped: thousands of skipped entries (names
// with control characters, symlinks, files over the cap) list the first
// MaxSkippedListed and count the rest.
func TestCollectOutputsSkippedListIsCapped(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"ctl", "links", "many"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 400 {
		writeFile(t, filepath.Join(root, "ctl", fmt.Sprintf("%04d", i)+strings.Repeat("\x01", 200)), nil)
		if err := os.Symlink("/etc/hostname", filepath.Join(root, "links", fmt.Sprintf("l%04d", i))); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, "many", fmt.Sprintf("f%04d", i)), []byte("x"))
	}
	c, err := CollectOutputs(root, 100, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	total := len(c.Skipped) + c.SkippedOmitted
	// 400 control names, 400 links, and 300 files over the file cap.
	if len(c.Skipped) != MaxSkippedListed || total != 1100 || len(c.Files) != 100 {
		t.Errorf("%d listed, %d omitted, %d files; want %d listed and the rest of 1100 counted", len(c.Skipped), c.SkippedOmitted, len(c.Files), MaxSkippedListed)
	}
	checkShown(t, c)
}

// TestCollectOutputsHostPathLimit: under an outputs directory whose own
// path is long, entries within the path cap can still be past the host's
// PATH_MAX; they are skipped, not a failure of the walk.
func TestCollectOutputsHostPathLimit(t *testing.T) {
	base := t.TempDir()
	var outer []string
	for i := range 13 { // about 3300 bytes of the root's own path
		outer = append(outer, fmt.Sprintf("%02d", i)+strings.Repeat("r", 248))
	}
	mkdirChain(t, base, outer)
	root := filepath.Join(append([]string{base}, outer...)...)
	writeFile(t, filepath.Join(root, "ok.txt"), []byte("ok"))
	var inner []string
	for i := range 4 { // 4 * 251 bytes: within the 1024-byte cap
		inner = append(inner, fmt.Sprintf("%d", i)+strings.Repeat("i", 250))
	}
	bottom := mkdirChain(t, root, inner)
	writeAt(t, bottom, strings.Repeat("f", 15), []byte("past PATH_MAX"))
	if len(root)+1+len(strings.Join(inner, "/"))+16 < unix.PathMax {
		t.Fatalf("the fixture does not reach PATH_MAX")
	}
	c, err := CollectOutputs(root, 1000, 1<<30)
	if err != nil {
		t.Fatalf("CollectOutputs: %v", err)
	}
	if want := []OutputFile{{"ok.txt", 2}}; !reflect.DeepEqual(c.Files, want) {
		t.Errorf("Files = %+v, want %+v", c.Files, want)
	}
	if len(c.Skipped) != 1 || c.Skipped[0].Reason != "path too long for the host to read" {
		t.Errorf("Skipped = %+q", c.Skipped)
	}
	checkShown(t, c)
}
