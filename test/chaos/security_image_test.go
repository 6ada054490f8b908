package chaos

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestHostileImageImport imports hostile images with the sandq binary,
// as an operator would, into an image directory whose parent any user of
// the host may enter (as /var/lib/sandq is):
//
//   - an image with a setuid-root copy of id(1) and a world-writable file:
//     no other user of the host can run or write them (the directories are
//     0700), and the bits are gone from the files themselves;
//   - a gzip bomb (a gzipped OCI layout tar whose blob is a GiB of zeros,
//     a MiB compressed): refused with the size cap's error naming
//     --max-size, nothing left in the image directory;
//   - a size cap over the maximum: refused, naming --max-size.
func TestHostileImageImport(t *testing.T) {
	parent, err := os.MkdirTemp("", "sandq-hostile-image-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(parent)
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	imageDir := filepath.Join(parent, "images")
	idBin, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}

	// A setuid-root id and a world-writable file, over a base with /bin.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, e := range []struct {
		name string
		mode int64
		body []byte
	}{
		{"bin/", 0o755, nil}, {"etc/", 0o755, nil}, {"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{"usr/", 0o755, nil}, {"usr/bin/", 0o755, nil}, {"usr/bin/rootid", 0o4755, idBin}, {"usr/bin/open", 0o666, []byte("anyone\n")},
	} {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), ModTime: mtime, Typeflag: tar.TypeReg}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.body)
	}
	tw.Close()
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(parent, "layout")
	l, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	sandq := func(args ...string) (string, error) {
		out, err := exec.Command(env.bin, append([]string{"image"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := sandq("import", "--image-dir", imageDir, layoutDir, "hostile"); err != nil {
		t.Fatalf("import: %v: %s", err, out)
	}
	rootid := filepath.Join(imageDir, "hostile", "rootfs", "usr", "bin", "rootid")
	open := filepath.Join(imageDir, "hostile", "rootfs", "usr", "bin", "open")
	// Another user of the host: nobody.
	// A shell of nobody's runs it (setpriv itself would resolve the path
	// with root's capabilities still held).
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", `exec "$0" -u`, rootid).CombinedOutput()
	if err == nil {
		t.Errorf("nobody ran the image's setuid-root binary on the host: euid %s", strings.TrimSpace(string(out)))
	}
	t.Logf("nobody running %s: %v: %s", rootid, err, strings.TrimSpace(string(out)))
	if err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", `echo x >> "$0"`, open).Run(); err == nil {
		t.Error("nobody wrote the image's world-writable file")
	}
	for p, want := range map[string]fs.FileMode{rootid: 0o755, open: 0o664, imageDir: fs.ModeDir | 0o700, filepath.Join(imageDir, "hostile"): fs.ModeDir | 0o700} {
		if st, err := os.Stat(p); err != nil || st.Mode() != want {
			t.Errorf("%s: %v %v, want %v", p, st.Mode(), err, want)
		}
	}

	// A gzip bomb: the layout tar, then a blob of a GiB of zeros, made of
	// concatenated gzip members (a MiB of zeros each, about a KiB).
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.BestCompression)
	zw.Write(make([]byte, 1<<20))
	zw.Close()
	var head bytes.Buffer
	tw = tar.NewWriter(&head)
	filepath.WalkDir(layoutDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(layoutDir, p)
		b, _ := os.ReadFile(p)
		tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b)), ModTime: mtime, Typeflag: tar.TypeReg})
		tw.Write(b)
		return nil
	})
	const bomb = 1 << 30
	tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + strings.Repeat("0", 64), Mode: 0o644, Size: bomb, ModTime: mtime, Typeflag: tar.TypeReg})
	tw.Flush()
	var gz bytes.Buffer
	hw := gzip.NewWriter(&gz)
	hw.Write(head.Bytes())
	hw.Close()
	for range bomb/(1<<20) + 1 { // the body and the end-of-archive blocks
		gz.Write(zb.Bytes())
	}
	bombPath := filepath.Join(parent, "bomb.tar.gz")
	if err := os.WriteFile(bombPath, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out2, err := sandq("import", "--image-dir", imageDir, "--max-size", "4MiB", bombPath, "bomb")
	t.Logf("bomb of %d bytes: %v after %s: %s", gz.Len(), err, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out2))
	if err == nil || !strings.Contains(out2, "more than 4194304 bytes") || !strings.Contains(out2, "--max-size") {
		t.Errorf("import of a gzip bomb: %v: %s; want the size cap's error", err, out2)
	}
	ents, _ := os.ReadDir(imageDir)
	for _, e := range ents {
		if e.Name() != "hostile" {
			t.Errorf("the refused import left %s in the image directory", e.Name())
		}
	}
	if out, err := sandq("import", "--image-dir", imageDir, "--max-size", "2TiB", layoutDir, "big"); err == nil || !strings.Contains(out, "--max-size") {
		t.Errorf("a size cap over the maximum: %v: %s", err, out)
	}
}
