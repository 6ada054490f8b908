package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeTree makes files (path -> content, mode) under dir.
func writeTree(t *testing.T, dir string, files map[string]os.FileMode) {
	t.Helper()
	for p, mode := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("content of "+p+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadOverlayNormalizesAndRefuses: modes are normalized as git does
// (the checkout's umask does not matter), and links, /mnt and /work are
// refused naming the entry.
func TestReadOverlayNormalizesAndRefuses(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]os.FileMode{"etc/pip.conf": 0o600, "usr/local/bin/tool": 0o700})
	entries, err := readOverlay(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Path+" "+e.Perm.String())
	}
	// Perm holds permission bits only; Dir says which entries are directories.
	want := "etc -rwxr-xr-x|etc/pip.conf -rw-r--r--|usr -rwxr-xr-x|usr/local -rwxr-xr-x|usr/local/bin -rwxr-xr-x|usr/local/bin/tool -rwxr-xr-x"
	if strings.Join(got, "|") != want {
		t.Errorf("entries %q\nwant %q", strings.Join(got, "|"), want)
	}
	if p := overlayPaths(entries); strings.Join(p, ",") != "etc/pip.conf,usr/local/bin/tool" {
		t.Errorf("overlayPaths %v", p)
	}

	link := t.TempDir()
	if err := os.Symlink("/etc/passwd", filepath.Join(link, "passwd")); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	writeTree(t, home, map[string]os.FileMode{"work/.bashrc": 0o644})
	mnt := t.TempDir()
	writeTree(t, mnt, map[string]os.FileMode{"mnt/inputs/x": 0o644})
	for _, c := range []struct{ dir, want string }{
		{link, "passwd: only directories and regular files"},
		{home, "work: /work belongs to the sandbox"},
		{mnt, "mnt: /mnt belongs to the sandbox"},
		{filepath.Join(dir, "etc/pip.conf"), "not a directory"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		if _, err := readOverlay(c.dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("readOverlay(%s): %v, want an error with %q", c.dir, err, c.want)
		}
	}
}

// TestOverlayStamp: no overlay leaves the stamp as it was before overlays
// existed; an overlay's paths, modes and contents all change it.
func TestOverlayStamp(t *testing.T) {
	o := BuildOptions{Name: "x", Packages: []string{"bash"}}
	o.defaults()
	base := buildStamp(o, nil, nil)
	if buildStamp(o, nil, []overlayEntry{}) != base {
		t.Error("an empty overlay changed the stamp")
	}
	one := []overlayEntry{{Path: "etc", Dir: true, Perm: 0o755}, {Path: "etc/a.conf", Perm: 0o644, Data: []byte("a=1\n")}}
	seen := map[string]string{base: "none"}
	for name, ov := range map[string][]overlayEntry{
		"one":     one,
		"content": {one[0], {Path: "etc/a.conf", Perm: 0o644, Data: []byte("a=2\n")}},
		"mode":    {one[0], {Path: "etc/a.conf", Perm: 0o755, Data: []byte("a=1\n")}},
		"path":    {one[0], {Path: "etc/b.conf", Perm: 0o644, Data: []byte("a=1\n")}},
		"dir":     {one[0], {Path: "etc/a.conf", Dir: true, Perm: 0o755}},
	} {
		s := buildStamp(o, nil, ov)
		if other, ok := seen[s]; ok {
			t.Errorf("overlays %q and %q give the same stamp", name, other)
		}
		seen[s] = name
	}
}

// TestApplyOverlay writes an overlay into a small tree: files replaced (a
// hard link to the old one keeps the old content), new directories owned by
// root with mode 0755, existing ones kept as they were, and nothing written
// through a symbolic link.
func TestApplyOverlay(t *testing.T) {
	needRoot(t, "applying an overlay (it is chowned to root)")
	rootfs := t.TempDir()
	writeTree(t, rootfs, map[string]os.FileMode{"etc/a.conf": 0o600, "usr/bin/true": 0o755})
	if err := os.Chmod(filepath.Join(rootfs, "etc"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(rootfs, "etc"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(rootfs, "etc/a.conf"), filepath.Join(rootfs, "etc/a-link.conf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(rootfs, "bin")); err != nil {
		t.Fatal(err)
	}
	ov := t.TempDir()
	writeTree(t, ov, map[string]os.FileMode{"etc/a.conf": 0o644, "etc/new/b.conf": 0o600})
	entries, err := readOverlay(ov)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyOverlay(rootfs, entries); err != nil {
		t.Fatal(err)
	}
	check := func(rel, content string, mode os.FileMode, uid int) {
		t.Helper()
		p := filepath.Join(rootfs, rel)
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
			t.Errorf("/%s: mode %s uid %d, want %s uid %d", rel, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, mode, uid)
		}
		if content != "" {
			if b, _ := os.ReadFile(p); string(b) != content {
				t.Errorf("/%s = %q, want %q", rel, b, content)
			}
		}
	}
	check("etc", "", os.ModeDir|0o750, 1000)
	check("etc/a.conf", "content of etc/a.conf\n", 0o644, 0)
	check("etc/new", "", os.ModeDir|0o755, 0)
	check("etc/new/b.conf", "content of etc/new/b.conf\n", 0o644, 0)
	// The old file's other name still has the old file (same text here,
	// but its own inode and mode).
	check("etc/a-link.conf", "", 0o600, 0)

	through := t.TempDir()
	writeTree(t, through, map[string]os.FileMode{"bin/evil": 0o755})
	entries, err = readOverlay(through)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyOverlay(rootfs, entries); !errors.Is(err, errLink) || !strings.Contains(err.Error(), "/bin") {
		t.Errorf("overlay through /bin, a link: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "usr/bin/evil")); err == nil {
		t.Error("the overlay wrote through the /bin link")
	}
}

// TestBuildWithOverlay builds a small image with an overlay, for real: the
// file is in the image, owned by root, listed in image.json, and part of
// the digest; building again with the same overlay is skipped.
func TestBuildWithOverlay(t *testing.T) {
	needRoot(t, "image builds")
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatalf("debootstrap is not installed (scripts/install-deps.sh installs it): %v", err)
	}
	ctx := context.Background()
	dir, ov := t.TempDir(), t.TempDir()
	writeTree(t, ov, map[string]os.FileMode{"etc/sandq-test.conf": 0o600})
	opts := BuildOptions{Name: "overlaid", Dir: dir, Packages: []string{"bash"}, Overlay: ov, Logger: testLogger(t)}
	start := time.Now()
	img, err := Build(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %s: %s", time.Since(start).Round(time.Second), img.Digest)
	p := filepath.Join(img.Rootfs, "etc/sandq-test.conf")
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "content of etc/sandq-test.conf\n" || st.Mode() != 0o644 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("overlaid file: %q mode %s uid %d", b, st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
	}
	got, err := Lookup(dir, "overlaid")
	if err != nil || strings.Join(got.Overlay, ",") != "etc/sandq-test.conf" {
		t.Fatalf("image.json overlay: %+v, %v", got, err)
	}
	if c, err := Digest(img.Rootfs); err != nil || c.Digest != img.Digest {
		t.Fatalf("digest of the tree %s, %v; recorded %s", c.Digest, err, img.Digest)
	}
	again, err := Build(ctx, opts)
	if err != nil || !again.Cached || again.Digest != img.Digest {
		t.Fatalf("rebuild with the same overlay: %+v, %v", again, err)
	}
}
