package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// A gzip bomb is built from gzip members of zeros, concatenated (a gzip
// stream may have many members): each member of a MiB of zeros is about a
// KiB, so a GiB of zeros takes a MiB on disk and no time to make.
var zeroMiB = sync.OnceValue(func() []byte { return gzipOf(make([]byte, 1<<20)) })

func gzipOf(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// gzipZeros writes gzip members that decompress to n zero bytes.
func gzipZeros(w io.Writer, n int64) {
	for ; n >= 1<<20; n -= 1 << 20 {
		w.Write(zeroMiB())
	}
	if n > 0 {
		w.Write(gzipOf(make([]byte, n)))
	}
}

// tarHead is the tar header block(s) of one entry, body not included.
func tarHead(t *testing.T, hdr *tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bombTar writes a gzipped tar: the entries of the plain tar prefix (not
// closed), then an entry bombName of bombSize zero bytes, then the end of
// the archive.
func bombTar(t *testing.T, p string, prefix []byte, bombName string, bombSize int64) int64 {
	t.Helper()
	var buf bytes.Buffer
	buf.Write(gzipOf(append(append([]byte{}, prefix...), tarHead(t, &tar.Header{Name: bombName, Typeflag: tar.TypeReg, Mode: 0o644, Size: bombSize, ModTime: time.Unix(1700000000, 0)})...)))
	gzipZeros(&buf, bombSize+1024) // the body, then the two zero blocks that end a tar
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return int64(buf.Len())
}

// tarEntriesOf is a plain tar stream (not closed) of the files under dir.
func tarEntriesOf(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Flush()
	return buf.Bytes()
}

// readChars is how many bytes this process has read so far (rchar of
// /proc/self/io: every read, from a file or the page cache).
func readChars(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "rchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no rchar in /proc/self/io:\n%s", b)
	return 0
}

// TestImportGzipBombs: archives and layers that decompress to far more
// than the import's size cap are refused with the cap's error once the
// cap is reached, whatever the bytes are (a blob of the layout, a file
// the import would skip, a whiteout's body): the import stops reading
// early and leaves nothing behind. A low cap keeps the test's disk use
// small.
func TestImportGzipBombs(t *testing.T) {
	needRoot(t, "image import")
	const limit = 4 << 20
	const bomb = 1 << 30 // 1 GiB of zeros, about 1 MiB gzipped

	// A layer whose whiteout entry has a GiB body: nothing is written,
	// but every byte is decompressed.
	whiteoutLayer := func() []byte {
		var buf bytes.Buffer
		buf.Write(gzipOf(tarHead(t, &tar.Header{Name: ".wh.bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: bomb})))
		gzipZeros(&buf, bomb+1024)
		return buf.Bytes()
	}()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(whiteoutLayer)), nil })
	if err != nil {
		t.Fatal(err)
	}
	whiteoutLayout := writeLayout(t, imageOf(t, base(t), layer))

	// A gzipped tar of a good layout with a GiB blob beside it.
	good := writeLayout(t, imageOf(t, base(t)))
	layoutBomb := filepath.Join(t.TempDir(), "layout.tar.gz")
	layoutBombSize := bombTar(t, layoutBomb, tarEntriesOf(t, good), "blobs/sha256/"+strings.Repeat("0", 64), bomb)

	// A gzipped `docker save` archive with a GiB file the import never uses.
	dockerTar := filepath.Join(t.TempDir(), "docker.tar")
	tag, _ := name.NewTag("sandq-test:bomb")
	if err := tarball.WriteToFile(dockerTar, tag, imageOf(t, base(t))); err != nil {
		t.Fatal(err)
	}
	dockerPlain := t.TempDir()
	if err := extractPlainTar(dockerTar, dockerPlain); err != nil {
		t.Fatal(err)
	}
	dockerBomb := filepath.Join(t.TempDir(), "docker.tar.gz")
	dockerBombSize := bombTar(t, dockerBomb, tarEntriesOf(t, dockerPlain), "junk", bomb/4)

	cases := []struct {
		name    string
		archive string
		size    int64 // compressed bytes of the bomb
	}{
		{"whiteout body in a layer", whiteoutLayout, int64(len(whiteoutLayer))},
		{"blob of a gzipped layout tar", layoutBomb, layoutBombSize},
		{"file in a gzipped docker save archive", dockerBomb, dockerBombSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			imageDir := t.TempDir()
			o := importOpts(t, imageDir, c.archive, "bomb")
			o.MaxBytes = limit
			before := readChars(t)
			start := time.Now()
			_, err := Import(context.Background(), o)
			read := readChars(t) - before
			t.Logf("import: %v after %s, %d bytes read (bomb: %d compressed)", err, time.Since(start).Round(time.Millisecond), read, c.size)
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes", limit)) || !strings.Contains(err.Error(), "--max-size") {
				t.Fatalf("import: %v; want the size cap's error naming the cap (%d bytes) and --max-size", err, limit)
			}
			if read > c.size/4 {
				t.Errorf("the import read %d bytes of a %d-byte bomb before stopping", read, c.size)
			}
			mustBeEmpty(t, imageDir)
		})
	}

	// The good layout alone imports under the same cap.
	o := importOpts(t, t.TempDir(), good, "good")
	o.MaxBytes = limit
	if _, err := Import(context.Background(), o); err != nil {
		t.Fatal(err)
	}
}

// TestImportCountsArchiveEntries: the entries of an image archive itself
// (not only of its layers) count against the entry cap.
func TestImportCountsArchiveEntries(t *testing.T) {
	needRoot(t, "image import")
	good := writeLayout(t, imageOf(t, base(t)))
	var buf bytes.Buffer
	buf.Write(tarEntriesOf(t, good))
	tw := tar.NewWriter(&buf)
	for i := range 500 {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("junk/%d", i), Typeflag: tar.TypeReg, Mode: 0o644})
	}
	tw.Close()
	archive := filepath.Join(t.TempDir(), "layout.tar")
	if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	imageDir := t.TempDir()
	o := importOpts(t, imageDir, archive, "many")
	o.MaxEntries = 100
	_, err := Import(context.Background(), o)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 100 entries") || !strings.Contains(err.Error(), "--max-entries") {
		t.Fatalf("import: %v; want the entry cap's error", err)
	}
	mustBeEmpty(t, imageDir)
	o.MaxEntries = 1000
	if _, err := Import(context.Background(), o); err != nil {
		t.Fatal(err)
	}
}

// extractPlainTar writes the regular files of a tar into dir.
func extractPlainTar(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(dir, hdr.Name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
}

// gnuSparseHeader is an old-GNU-format sparse entry (type 'S'): a file of
// realSize bytes whose only data are its last 512 bytes, stored after the
// header; the rest is a hole the tar reader expands to zeros.
func gnuSparseHeader(name string, realSize int64) []byte {
	h := make([]byte, 512)
	octal := func(off, n int, v int64) { copy(h[off:off+n], fmt.Sprintf("%0*o\x00", n-1, v)) }
	copy(h[0:], name)
	octal(100, 8, 0o644)
	octal(108, 8, 0)
	octal(116, 8, 0)
	octal(124, 12, 512) // bytes stored
	octal(136, 12, 1700000000)
	h[156] = tar.TypeGNUSparse
	copy(h[257:], "ustar  \x00")
	octal(386, 12, realSize-512) // sparse[0]: offset, then bytes
	octal(398, 12, 512)
	octal(483, 12, realSize)
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

// TestImportChargesSparseFiles: a sparse file's holes are not in the
// layer's stream but are written out whole; they count against the size
// cap, so many small-looking sparse files cannot fill the disk.
func TestImportChargesSparseFiles(t *testing.T) {
	needRoot(t, "image import")
	var raw bytes.Buffer
	for i := range 10 {
		raw.Write(gnuSparseHeader(fmt.Sprintf("s%d", i), 3<<20))
		raw.Write(bytes.Repeat([]byte("x"), 512))
	}
	raw.Write(make([]byte, 1024))
	b := raw.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	archive := writeLayout(t, imageOf(t, base(t), layer))
	imageDir := t.TempDir()
	o := importOpts(t, imageDir, archive, "sparse")
	o.MaxBytes = 8 << 20 // two 3 MiB files fit, the third does not
	_, err = Import(context.Background(), o)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `entry "s2"`) {
		t.Fatalf("import: %v; want the size cap to bite at the third sparse file", err)
	}
	mustBeEmpty(t, imageDir)
	o.MaxBytes = 64 << 20
	got, err := Import(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(filepath.Join(got.Rootfs, "s9"))
	if err != nil || len(content) != 3<<20 || !bytes.Equal(content[len(content)-512:], bytes.Repeat([]byte("x"), 512)) || content[0] != 0 {
		t.Fatalf("s9: %d bytes, %v; want 3 MiB ending in 512 x", len(content), err)
	}
}

// TestImportRefusesLayoutLinksAndHugeDocuments: an OCI layout directory
// whose blob is a symbolic link (it could read any file of the host into
// the image) is refused, and so is one whose index or config is larger
// than a JSON document of an image may be (each is read whole into
// memory). Nothing is left behind.
func TestImportRefusesLayoutLinksAndHugeDocuments(t *testing.T) {
	needRoot(t, "image import")
	img := imageOf(t, base(t), layerOf(t, file("secret-from-the-host", "x")))
	layerDigest := func(t *testing.T) string {
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		d, err := ls[1].Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.Hex
	}
	cases := []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  error
		text  string
	}{
		{"blob is a symbolic link", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "blobs", "sha256", layerDigest(t))
			moved := filepath.Join(t.TempDir(), "elsewhere")
			if err := os.Rename(p, moved); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(moved, p); err != nil {
				t.Fatal(err)
			}
		}, ErrUnsafeEntry, "is not a regular file"},
		{"index.json too large", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, "index.json"), maxMetaBytes+1); err != nil {
				t.Fatal(err)
			}
		}, ErrTooLarge, "index.json is 16777217 bytes"},
		{"config too large", func(t *testing.T, dir string) {
			cfg, err := img.ConfigName()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(filepath.Join(dir, "blobs", "sha256", cfg.Hex), maxMetaBytes+1); err != nil {
				t.Fatal(err)
			}
		}, ErrTooLarge, "config sha256:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeLayout(t, img)
			c.spoil(t, dir)
			imageDir := t.TempDir()
			_, err := Import(context.Background(), importOpts(t, imageDir, dir, "spoiled"))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("import: %v; want %v mentioning %q", err, c.want, c.text)
			}
			mustBeEmpty(t, imageDir)
		})
	}
}
