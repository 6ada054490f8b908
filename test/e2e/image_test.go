package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// rootfsSubset is the part of the test image the imported copy gets: the
// usrmerge links, /etc, the programs and the shared libraries beside them
// (not their subdirectories, nor the few big ones), enough for a shell.
func rootfsSubset(rel string, d fs.DirEntry, size int64) bool {
	switch {
	case rel == "bin" || rel == "lib" || rel == "lib64" || rel == "sbin" || rel == "usr" || rel == "usr/lib":
		return true
	case rel == "etc" || strings.HasPrefix(rel, "etc/"), rel == "usr/bin" || strings.HasPrefix(rel, "usr/bin/"),
		rel == "usr/lib64" || strings.HasPrefix(rel, "usr/lib64/"):
		return true
	case rel == "usr/lib/x86_64-linux-gnu":
		return true
	case strings.HasPrefix(rel, "usr/lib/x86_64-linux-gnu/"):
		return !strings.Contains(strings.TrimPrefix(rel, "usr/lib/x86_64-linux-gnu/"), "/") && !d.IsDir() && size <= 4<<20
	}
	return false
}

// tarOf writes the entries of root that keep selects as a tar stream.
func tarOf(root string, keep func(string, fs.DirEntry, int64) bool, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !keep(rel, d, info.Size()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		link := ""
		if d.Type()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !d.IsDir() && !d.Type().IsRegular() {
			return nil // device nodes
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
		if d.IsDir() {
			hdr.Name += "/"
		}
		st := info.Sys().(*syscall.Stat_t)
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = int(st.Uid), int(st.Gid), "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// TestJobOnImportedImage flattens part of the test image into a
// single-layer OCI archive, imports it under a new name into a fresh image
// directory, and runs a shell job that names it on a worker whose queue
// allows it; the result records the image and its digest. Images a queue
// does not allow are refused at enqueue.
func TestJobOnImportedImage(t *testing.T) {
	ctx := context.Background()
	src, err := image.Path(env.cfg.Worker.ImageDir, env.cfg.Worker.Image)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		r, w := io.Pipe()
		go func() { w.CloseWithError(tarOf(src, rootfsSubset, w)) }()
		return r, nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{Env: []string{"PATH=/usr/bin:/bin"}}})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "layout")
	l, err := layout.Write(archive, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote the OCI archive in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	imageDir := t.TempDir()
	imported, err := image.Import(ctx, image.ImportOptions{Name: "imported", Archive: archive, Dir: imageDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("imported in %s: %s, %d files, %d bytes", time.Since(start).Round(time.Millisecond), imported.Digest, imported.Files, imported.Size)
	got, err := image.Resolve(imageDir, "imported")
	if err != nil || got.Digest != imported.Digest {
		t.Fatalf("Resolve: %+v %v", got, err)
	}
	// On the host: the image directory and the image's are 0700, and the
	// setuid binaries the source image has (su, passwd, mount) are not.
	for _, p := range []string{imageDir, filepath.Join(imageDir, "imported")} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v; want 0700", p, st.Mode(), err)
		}
	}
	filepath.WalkDir(imported.Rootfs, func(p string, d fs.DirEntry, err error) error {
		if info, ierr := os.Lstat(p); err == nil && ierr == nil && info.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Errorf("%s: %v; no setuid/setgid bit may stay on the host", p, info.Mode())
		}
		return nil
	})

	// A worker whose queue allows the imported image besides its default
	// (the test image, linked into the same image directory).
	if err := os.Symlink(filepath.Dir(src), filepath.Join(imageDir, env.cfg.Worker.Image)); err != nil {
		t.Fatal(err)
	}
	w := startBudgetWorker(t, "images", 4*jobMemory, func(c *jobs.Config) {
		c.Worker.ImageDir, c.Worker.Images = imageDir, []string{"imported"}
	})
	start = time.Now()
	// Inside the sandbox the job user still writes /tmp (1777, on the
	// image's overlay), and su has lost its setuid bit.
	script := `echo "hello from $(id -u) on an imported image" > /mnt/outputs/hello.txt; ls /tmp/.sandq
stat -c '%a %n' /tmp /usr/bin/su > /mnt/outputs/modes.txt && touch /tmp/by-the-job && echo "tmp writable" >> /mnt/outputs/modes.txt`
	enq, err := w.client.Enqueue(ctx, jobs.Submission{Script: file(t, "hello.sh", script), Queue: w.queue, Image: "imported"})
	if err != nil {
		t.Fatal(err)
	}
	r := w.result(t, enq.ID)
	wantStatus(t, r, jobs.StatusSucceeded)
	if r.Image != "imported" || r.ImageDigest != imported.Digest || len(r.Outputs) != 2 {
		t.Fatalf("result on the imported image: image %q digest %q outputs %+v", r.Image, r.ImageDigest, r.Outputs)
	}
	for _, o := range r.Outputs {
		want := map[string]string{"hello.txt": "hello from 1000 on an imported image\n", "modes.txt": "1777 /tmp\n755 /usr/bin/su\ntmp writable\n"}[o.Path]
		if b := download(t, o.URL); string(b) != want {
			t.Errorf("%s = %q, want %q", o.Path, b, want)
		}
	}
	t.Logf("job ran in %s", time.Since(start).Round(time.Millisecond))

	// Without a name, the queue's default; a name the queue does not allow,
	// or that is not a name, is refused at enqueue and leaves nothing.
	enq, err = w.client.Enqueue(ctx, jobs.Submission{Script: file(t, "plain.sh", "true"), Queue: w.queue})
	if err != nil {
		t.Fatal(err)
	}
	if r := w.result(t, enq.ID); r.Image != env.cfg.Worker.Image {
		t.Errorf("a job naming no image ran on %q", r.Image)
	}
	objBefore, keysBefore := snapshot(t)
	for _, name := range []string{"analysis-not-here", "../default", "."} {
		_, err := w.client.Enqueue(ctx, jobs.Submission{Script: file(t, "x.sh", "true"), Queue: w.queue, Image: name})
		var fe *jobs.FieldError
		if !errors.As(err, &fe) || fe.Field != "image" {
			t.Errorf("image %q: %v, want a refusal naming the image", name, err)
		}
	}
	// The test stack's own queue allows only its default image.
	if _, err := env.client.Enqueue(ctx, jobs.Submission{Script: file(t, "x.sh", "true"), Image: "imported"}); err == nil || !strings.Contains(err.Error(), "not allowed on queue") {
		t.Errorf("an image the queue does not allow: %v", err)
	}
	objAfter, keysAfter := snapshot(t)
	if strings.Join(objBefore, "\n") != strings.Join(objAfter, "\n") {
		t.Errorf("refused images left objects: %v", objAfter)
	}
	for _, k := range keysAfter {
		if strings.Contains(k, ":t:") && !contains(keysBefore, k) {
			t.Errorf("new task key in Redis: %s", k)
		}
	}
}
