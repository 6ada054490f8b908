package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one tar entry of a test layer.
type entry struct {
	name string
	typ  byte
	body string
	link string
	mode int64
	uid  int
}

func file(name, body string) entry   { return entry{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) entry          { return entry{name: name, typ: tar.TypeDir} }
func symlink(name, to string) entry  { return entry{name: name, typ: tar.TypeSymlink, link: to} }
func hardlink(name, to string) entry { return entry{name: name, typ: tar.TypeLink, link: to} }

// layerOf makes an image layer holding entries, in order.
func layerOf(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if e.typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: mode, Uid: e.uid, Gid: e.uid, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if e.typ == tar.TypeChar {
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		if e.typ == tar.TypeXGlobalHeader {
			hdr = &tar.Header{Typeflag: e.typ, PAXRecords: map[string]string{"comment": "from git archive"}}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf makes an image of layers, lowest first.
func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes img as an OCI image layout directory.
func writeLayout(t *testing.T, img v1.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layout")
	l, err := layout.Write(p, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return p
}

// base is a lower layer with what an image needs to be found (/bin) and
// a passwd without the job user.
func base(t *testing.T) v1.Layer {
	return layerOf(t, dir("bin/"), file("bin/sh", "#!not really a shell\n"), dir("etc/"),
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), file("etc/group", "root:x:0:\n"), dir("tmp/"))
}

func importOpts(t *testing.T, dir, archive, name string) ImportOptions {
	return ImportOptions{Name: name, Dir: dir, Archive: archive, CADir: t.TempDir(), Logger: testLogger(t)}
}

func mustBeEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Fatalf("a failed import left %v in %s", names, dir)
	}
}

// needRoot skips the test under -short (the fast tier, which any user
// runs) and fails it unless it runs as root: what needs root.
func needRoot(t *testing.T, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("skipped under -short: %s must run as root", what)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s must run as root", what)
	}
}

func TestImportHonoursWhiteouts(t *testing.T) {
	needRoot(t, "image import")
	lower := layerOf(t,
		dir("etc/"), file("etc/keep", "old"), file("etc/gone", "whited out"),
		dir("opaque/"), file("opaque/old", "hidden"), dir("opaque/sub/"), file("opaque/sub/old", "hidden too"),
		dir("data/"), file("data/hard", "linked"), entry{name: "data/owned", typ: tar.TypeReg, body: "x", mode: 0o4750, uid: 1234},
		dir("dir-to-file/"), file("dir-to-file/child", "replaced"),
		entry{name: "dev/null", typ: tar.TypeChar}, entry{name: "run/fifo", typ: tar.TypeFifo},
	)
	upper := layerOf(t,
		dir("etc/"), file("etc/.wh.gone", ""), file("etc/keep", "new"),
		dir("opaque/"), file("opaque/new", "made before the marker"), file("opaque/.wh..wh..opq", ""), dir("opaque/sub/"),
		file("opaque/after", "made after the marker"),
		hardlink("data/link", "data/hard"), file("dir-to-file", "now a file"),
		file(".wh.never-existed", ""),
		entry{name: "pax_global_header", typ: tar.TypeXGlobalHeader},
	)
	img := imageOf(t, base(t), lower, upper)
	configDigest, _ := img.ConfigName()
	imageDir := t.TempDir()

	// The same image three ways: a layout directory, a gzipped tar of it,
	// and a `docker save` tarball. All three import to the same digest.
	layoutDir := writeLayout(t, img)
	layoutTar := filepath.Join(t.TempDir(), "layout.tar.gz")
	if out, err := exec.Command("tar", "-C", layoutDir, "-czf", layoutTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	dockerTar := filepath.Join(t.TempDir(), "docker.tar")
	tag, err := name.NewTag("sandq-test:whiteouts")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(dockerTar, tag, img); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, c := range []struct{ name, archive string }{{"from-layout", layoutDir}, {"from-layout-tar", layoutTar}, {"from-docker", dockerTar}} {
		got, err := Import(context.Background(), importOpts(t, imageDir, c.archive, c.name))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got.Source != SourceImport || got.ConfigDigest != configDigest.String() || got.Skipped != 2 {
			t.Errorf("%s: %+v; want source import, config %s, 2 skipped", c.name, got, configDigest)
		}
		digests = append(digests, got.Digest)
	}
	if digests[0] != digests[1] || digests[1] != digests[2] {
		t.Errorf("one image, three archive formats, digests %v", digests)
	}

	got, err := Resolve(imageDir, "from-layout")
	if err != nil {
		t.Fatal(err)
	}
	root := got.Rootfs
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	gone := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return errors.Is(err, os.ErrNotExist)
	}
	if !gone("etc/gone") {
		t.Error("the whiteout did not delete /etc/gone")
	}
	if read("etc/keep") != "new" {
		t.Errorf("/etc/keep = %q, want the upper layer's", read("etc/keep"))
	}
	if !gone("opaque/old") || !gone("opaque/sub/old") {
		t.Error("the opaque whiteout left lower-layer files in /opaque")
	}
	if read("opaque/new") != "made before the marker" || read("opaque/after") != "made after the marker" {
		t.Errorf("the opaque whiteout removed the upper layer's own files: %q %q", read("opaque/new"), read("opaque/after"))
	}
	if st, err := os.Lstat(filepath.Join(root, "opaque/sub")); err != nil || !st.IsDir() {
		t.Errorf("/opaque/sub: %v", err)
	}
	if read("dir-to-file") != "now a file" {
		t.Errorf("a file over a lower directory: %q", read("dir-to-file"))
	}
	a, _ := os.Stat(filepath.Join(root, "data/hard"))
	b, _ := os.Stat(filepath.Join(root, "data/link"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Error("data/link is not a hard link to data/hard")
	}
	// Owner kept, setuid bit not (see TestImportLeavesNoPrivilegesOnTheHost).
	if st, err := os.Lstat(filepath.Join(root, "data/owned")); err != nil || st.Mode()&os.ModeSetuid != 0 || st.Mode().Perm() != 0o750 || st.Sys().(*syscall.Stat_t).Uid != 1234 {
		t.Errorf("data/owned: %v %v; want 0750 without setuid, owned by 1234", st.Mode(), err)
	}
	if !gone("dev/null") || !gone("run/fifo") {
		t.Error("a device node or FIFO was extracted")
	}
	// Finished for sandq like a built image.
	if !strings.Contains(read("etc/passwd"), "sandbox:x:1000:1000:") || !strings.Contains(read("etc/group"), "sandbox:x:1000:") {
		t.Errorf("no job user:\n%s%s", read("etc/passwd"), read("etc/group"))
	}
	for _, p := range []string{"tmp/.sandq", "mnt/inputs", "mnt/outputs", "mnt/job", "work"} {
		if gone(p) {
			t.Errorf("/%s missing", p)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "work")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("/work is not the job user's: %v", err)
	}
	var meta Image
	if err := json.Unmarshal([]byte(read("../image.json")), &meta); err != nil || meta.Digest != got.Digest || meta.Source != SourceImport || meta.ConfigDigest != configDigest.String() {
		t.Errorf("image.json: %s (%v)", read("../image.json"), err)
	}
	if strings.TrimSpace(read("../digest")) != got.Digest {
		t.Errorf("digest file %q, want %s", read("../digest"), got.Digest)
	}
	if c, err := Digest(root); err != nil || c.Digest != got.Digest {
		t.Errorf("recorded digest %s, tree's %s (%v)", got.Digest, c.Digest, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(imageDir, ".*")); len(leftovers) != 0 {
		t.Errorf("left in the image directory: %v", leftovers)
	}
}

// TestImportRefusesEscapes: every way out of the root is refused with an
// error naming the entry, nothing is written outside, and nothing is left
// in the image directory.
func TestImportRefusesEscapes(t *testing.T) {
	needRoot(t, "image import")
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("intact"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(outside, "sub"), 0o755)
	os.WriteFile(filepath.Join(outside, "sub", "victim"), []byte("intact"), 0o644)
	// A name that would appear in the host's /tmp if "/" were followed.
	hostTmp := "sandq-escape-" + randomHex()
	t.Cleanup(func() { os.Remove(filepath.Join("/tmp", hostTmp)) })

	cases := []struct {
		name   string
		layers [][]entry
		entry  string // named in the error
	}{
		{"dot-dot", [][]entry{{file("../escape", "out")}}, "../escape"},
		{"dot-dot inside", [][]entry{{dir("a/"), file("a/../../escape", "out")}}, "a/../../escape"},
		{"absolute", [][]entry{{file("/abs-escape", "out")}}, "/abs-escape"},
		{"through a symlink to /", [][]entry{{symlink("evil", "/"), file("evil/tmp/"+hostTmp, "out")}}, "evil/tmp/" + hostTmp},
		{"through a symlink outside", [][]entry{{symlink("evil", outside), file("evil/pwned", "out")}}, "evil/pwned"},
		{"through a symlink from a lower layer", [][]entry{{symlink("evil", outside)}, {file("evil/pwned", "out")}}, "evil/pwned"},
		{"through a relative symlink", [][]entry{{symlink("evil", "../../../../../../.."+outside)}, {dir("evil/x/")}}, "evil/x/"},
		{"directory through a symlink", [][]entry{{symlink("evil", outside), dir("evil/sub/")}}, "evil/sub/"},
		{"hard link out with ..", [][]entry{{hardlink("x", "../"+filepath.Base(outside)+"/victim")}}, "x"},
		{"hard link to an absolute path", [][]entry{{hardlink("x", victim)}}, "x"},
		{"hard link through a symlink", [][]entry{{symlink("evil", outside), hardlink("x", "evil/victim")}}, "x"},
		{"whiteout through a symlink", [][]entry{{symlink("evil", outside)}, {file("evil/.wh.victim", "")}}, "evil/.wh.victim"},
		{"opaque whiteout through a symlink", [][]entry{{symlink("evil", outside)}, {file("evil/sub/.wh..wh..opq", "")}}, "evil/sub/.wh..wh..opq"},
	}
	imageDir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			layers := []v1.Layer{base(t)}
			for _, es := range c.layers {
				layers = append(layers, layerOf(t, es...))
			}
			archive := writeLayout(t, imageOf(t, layers...))
			_, err := Import(context.Background(), importOpts(t, imageDir, archive, "escape"))
			if !errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("import: %v; want an unsafe entry refused", err)
			}
			if !strings.Contains(err.Error(), "entry \""+c.entry+"\"") {
				t.Errorf("the error does not name entry %q: %v", c.entry, err)
			}
			t.Log(err)
			mustBeEmpty(t, imageDir)
			for _, p := range []string{victim, filepath.Join(outside, "sub", "victim")} {
				if b, err := os.ReadFile(p); err != nil || string(b) != "intact" {
					t.Errorf("%s outside the image was touched: %q %v", p, b, err)
				}
			}
			for _, p := range []string{filepath.Join(outside, "pwned"), filepath.Join(outside, "x"), filepath.Join(outside, "sub", "x"), filepath.Join("/tmp", hostTmp), filepath.Join(filepath.Dir(imageDir), "escape"), "/abs-escape"} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written outside the image", p)
				}
			}
		})
	}
}

// TestImportFinishingRefusesLinks: the files sandq writes into an imported
// image are never written through a symbolic link the image planted.
func TestImportFinishingRefusesLinks(t *testing.T) {
	needRoot(t, "image import")
	outside := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(outside, []byte("intact\n"), 0o644)
	for _, c := range []struct{ name, target string }{{"absolute", outside}, {"inside", "group"}} {
		t.Run(c.name, func(t *testing.T) {
			imageDir := t.TempDir()
			archive := writeLayout(t, imageOf(t, base(t), layerOf(t, symlink("etc/passwd", c.target))))
			_, err := Import(context.Background(), importOpts(t, imageDir, archive, "links"))
			if !errors.Is(err, errLink) || !strings.Contains(err.Error(), "/etc/passwd") {
				t.Fatalf("import: %v; want /etc/passwd refused as a link", err)
			}
			mustBeEmpty(t, imageDir)
			if b, _ := os.ReadFile(outside); string(b) != "intact\n" {
				t.Errorf("the file outside was written: %q", b)
			}
		})
	}
}

func TestImportCaps(t *testing.T) {
	needRoot(t, "image import")
	archive := writeLayout(t, imageOf(t, base(t), layerOf(t, file("big", strings.Repeat("x", 64<<10)))))
	imageDir := t.TempDir()
	t.Run("size", func(t *testing.T) {
		o := importOpts(t, imageDir, archive, "capped")
		o.MaxBytes = 32 << 10 // base's layer fits, big does not
		_, err := Import(context.Background(), o)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `entry "big"`) || !strings.Contains(err.Error(), "more than 32768 bytes (32KiB), the import's size cap; raise it with --max-size") {
			t.Fatalf("import: %v; want the size cap to bite at entry big", err)
		}
		mustBeEmpty(t, imageDir)
	})
	t.Run("entries", func(t *testing.T) {
		o := importOpts(t, imageDir, archive, "capped")
		o.MaxEntries = 5 // base has 6
		_, err := Import(context.Background(), o)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 5 entries") {
			t.Fatalf("import: %v; want the entry cap to bite", err)
		}
		mustBeEmpty(t, imageDir)
	})
	t.Run("under the caps", func(t *testing.T) {
		o := importOpts(t, imageDir, archive, "capped")
		o.MaxBytes, o.MaxEntries = 128<<10, 7
		if _, err := Import(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	})
}

func TestImportRefusesUnsupportedEntriesAndNames(t *testing.T) {
	needRoot(t, "image import")
	imageDir := t.TempDir()
	archive := writeLayout(t, imageOf(t, base(t), layerOf(t, entry{name: "odd", typ: 'V'})))
	_, err := Import(context.Background(), importOpts(t, imageDir, archive, "odd"))
	if err == nil || !strings.Contains(err.Error(), `entry "odd": unsupported entry type 'V'`) {
		t.Fatalf("import: %v; want the entry type refused", err)
	}
	mustBeEmpty(t, imageDir)
	good := writeLayout(t, imageOf(t, base(t)))
	for _, bad := range []string{"", "../x", ".hidden", "a/b", "a b"} {
		if _, err := Import(context.Background(), importOpts(t, imageDir, good, bad)); err == nil || !strings.Contains(err.Error(), "must be a plain name") {
			t.Errorf("import as %q: %v; want a bad-name error", bad, err)
		}
	}
	mustBeEmpty(t, imageDir)
}

func TestImportExistingNameAndRemove(t *testing.T) {
	needRoot(t, "image import")
	imageDir := t.TempDir()
	one := writeLayout(t, imageOf(t, base(t), layerOf(t, file("version", "1"))))
	two := writeLayout(t, imageOf(t, base(t), layerOf(t, file("version", "2"))))
	first, err := Import(context.Background(), importOpts(t, imageDir, one, "img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Import(context.Background(), importOpts(t, imageDir, two, "img")); !errors.Is(err, ErrExists) {
		t.Fatalf("import over an existing image: %v; want ErrExists", err)
	}
	o := importOpts(t, imageDir, two, "img")
	o.Force = true
	second, err := Import(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if second.Digest == first.Digest {
		t.Fatal("a different image has the same digest")
	}
	if got, err := Resolve(imageDir, "img"); err != nil || got.Digest != second.Digest {
		t.Fatalf("Resolve after --force: %+v %v", got, err)
	}
	list, err := List(imageDir)
	if err != nil || len(list) != 1 || list[0].Name != "img" || list[0].Source != SourceImport {
		t.Fatalf("List: %v %v", list, err)
	}
	if err := Remove(imageDir, "img"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(imageDir, "img"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing a missing image: %v; want ErrNotFound", err)
	}
	if _, err := Resolve(imageDir, "img"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve of a removed image: %v", err)
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b"} {
		if err := Remove(imageDir, bad); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Remove(%q): %v; want a bad-name error", bad, err)
		}
	}
}

func TestImportPicksThePlatform(t *testing.T) {
	needRoot(t, "image import")
	amd := imageOf(t, base(t), layerOf(t, file("arch", "amd64")))
	arm := imageOf(t, base(t), layerOf(t, file("arch", "arm64")))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	p := filepath.Join(t.TempDir(), "layout")
	l, err := layout.Write(p, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendIndex(idx); err != nil {
		t.Fatal(err)
	}
	imageDir := t.TempDir()
	got, err := Import(context.Background(), importOpts(t, imageDir, p, "multi"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(got.Rootfs, "arch")); string(b) != "amd64" {
		t.Errorf("imported the %q image from a multi-platform index", b)
	}

	notArchive := filepath.Join(t.TempDir(), "not.tar")
	os.WriteFile(notArchive, []byte("hello"), 0o644)
	if _, err := Import(context.Background(), importOpts(t, imageDir, notArchive, "bad")); err == nil {
		t.Fatal("imported a file that is not an archive")
	}
}
