package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// hostileModes is a layer of an image that tries to leave privileges on the
// worker host: a setuid-root binary (and a hard link to it), setgid and
// sticky files, a world-writable file, world-writable, setgid and setuid
// directories.
func hostileModes(t *testing.T) v1.Layer {
	return layerOf(t,
		dir("usr/"), dir("usr/bin/"),
		entry{name: "usr/bin/rootshell", typ: tar.TypeReg, body: "#!/bin/sh\nexec /bin/sh -p\n", mode: 0o4755},
		entry{name: "usr/bin/sgid", typ: tar.TypeReg, body: "x", mode: 0o2755, uid: 42},
		entry{name: "usr/bin/both", typ: tar.TypeReg, body: "x", mode: 0o6711},
		entry{name: "usr/bin/sticky", typ: tar.TypeReg, body: "x", mode: 0o1755},
		hardlink("usr/bin/rootshell-link", "usr/bin/rootshell"),
		dir("data/"),
		entry{name: "data/open", typ: tar.TypeReg, body: "anyone may write me", mode: 0o666},
		entry{name: "data/everyone/", typ: tar.TypeDir, mode: 0o777},
		entry{name: "data/shared/", typ: tar.TypeDir, mode: 0o2775},
		entry{name: "data/dirsuid/", typ: tar.TypeDir, mode: 0o4755},
		dir("var/"), entry{name: "var/tmp/", typ: tar.TypeDir, mode: 0o1777},
	)
}

// checkHostSafe fails the test for any setuid or setgid bit under rootfs,
// any world-writable or sticky non-directory, and any world-writable
// directory without the sticky bit.
func checkHostSafe(t *testing.T, rootfs string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return nil
		}
		n++
		m := st.Mode()
		rel, _ := filepath.Rel(rootfs, p)
		if m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			t.Errorf("/%s has setuid/setgid bits: %v", rel, m)
		}
		if !m.IsDir() && m&(fs.ModeSticky|0o002) != 0 {
			t.Errorf("/%s is sticky or world-writable: %v", rel, m)
		}
		if m.IsDir() && m&0o002 != 0 && m&fs.ModeSticky == 0 {
			t.Errorf("directory /%s is world-writable without the sticky bit: %v", rel, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("walked only %d entries of %s", n, rootfs)
	}
}

func wantPerm(t *testing.T, p string, want fs.FileMode) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	got := st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if got != want {
		t.Errorf("%s: mode %v, want %v", p, got, want)
	}
}

// TestImportLeavesNoPrivilegesOnTheHost: an imported image keeps no
// setuid/setgid bit and no world-writable file anywhere, world-writable
// directories are sticky (like /tmp), and the image directory and each
// image's directory are 0700 (an existing 0755 one is tightened), so no
// other user of the worker host can reach what is inside. The digest stays
// the digest of the tree, the same for the same archive.
func TestImportLeavesNoPrivilegesOnTheHost(t *testing.T) {
	needRoot(t, "image import")
	img := imageOf(t, base(t), hostileModes(t))
	layoutDir := writeLayout(t, img)
	dockerTar := filepath.Join(t.TempDir(), "docker.tar")
	tag, err := name.NewTag("sandq-test:modes")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(dockerTar, tag, img); err != nil {
		t.Fatal(err)
	}
	// An image directory made by an older sandq: 0755.
	imageDir := filepath.Join(t.TempDir(), "images")
	if err := os.Mkdir(imageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, c := range []struct{ name, archive string }{{"from-layout", layoutDir}, {"from-docker", dockerTar}} {
		got, err := Import(context.Background(), importOpts(t, imageDir, c.archive, c.name))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		root := got.Rootfs
		checkHostSafe(t, root)
		wantPerm(t, filepath.Join(root, "usr/bin/rootshell"), 0o755)
		wantPerm(t, filepath.Join(root, "usr/bin/sgid"), 0o755)
		wantPerm(t, filepath.Join(root, "usr/bin/both"), 0o711)
		wantPerm(t, filepath.Join(root, "usr/bin/sticky"), 0o755)
		wantPerm(t, filepath.Join(root, "data/open"), 0o664)
		wantPerm(t, filepath.Join(root, "data/everyone"), 0o777|fs.ModeSticky)
		wantPerm(t, filepath.Join(root, "data/shared"), 0o775)
		wantPerm(t, filepath.Join(root, "data/dirsuid"), 0o755)
		// Inside the sandbox the job user still writes /tmp and /var/tmp.
		wantPerm(t, filepath.Join(root, "tmp"), 0o777|fs.ModeSticky)
		wantPerm(t, filepath.Join(root, "var/tmp"), 0o777|fs.ModeSticky)
		// The container's / stays traversable by the job user.
		wantPerm(t, root, 0o755)
		if st, err := os.Lstat(filepath.Join(root, "usr/bin/rootshell")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 0 || st.Sys().(*syscall.Stat_t).Nlink != 2 {
			t.Errorf("rootshell: %v; want owned by root and still hard-linked", err)
		}
		if st, err := os.Lstat(filepath.Join(root, "usr/bin/sgid")); err != nil || st.Sys().(*syscall.Stat_t).Uid != 42 {
			t.Errorf("sgid: %v; owner not kept", err)
		}
		wantPerm(t, filepath.Join(imageDir, c.name), 0o700)
		if c, err := Digest(root); err != nil || c.Digest != got.Digest {
			t.Errorf("recorded digest %s, tree's %s (%v)", got.Digest, c.Digest, err)
		}
		digests = append(digests, got.Digest)
	}
	wantPerm(t, imageDir, 0o700)
	if digests[0] != digests[1] {
		t.Errorf("one image, two archive formats, digests %v", digests)
	}

	// A fresh image directory is made 0700.
	fresh := filepath.Join(t.TempDir(), "new", "images")
	if _, err := Import(context.Background(), importOpts(t, fresh, layoutDir, "again")); err != nil {
		t.Fatal(err)
	}
	wantPerm(t, fresh, 0o700)
	got, err := Resolve(fresh, "again")
	if err != nil || got.Digest != digests[0] {
		t.Errorf("the same archive imported again: %v %v, want digest %s", got, err, digests[0])
	}
}

// TestHardenFixesImagesOfOlderSandq: an image made before sandq hardened
// images (setuid and world-writable files, a device node, a file
// capability, 0755 directories, no "hardening" in its metadata) is
// brought up to date in place by Harden, which a worker runs on its images
// when it starts: afterwards it is what a fresh import of the same archive
// is, digest included, and the recorded digest is the tree's. Harden on an
// up-to-date image writes nothing; an image directory that is not root's
// is refused.
func TestHardenFixesImagesOfOlderSandq(t *testing.T) {
	needRoot(t, "image import")
	archive := writeLayout(t, imageOf(t, base(t), hostileModes(t)))
	imageDir := t.TempDir()
	fresh, err := Import(context.Background(), importOpts(t, imageDir, archive, "fresh"))
	if err != nil {
		t.Fatal(err)
	}
	old, err := Import(context.Background(), importOpts(t, imageDir, archive, "old"))
	if err != nil {
		t.Fatal(err)
	}
	// Make "old" what an older sandq left.
	root := old.Rootfs
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(filepath.Join(root, "usr/bin/rootshell"), 0o755|fs.ModeSetuid))
	must(os.Chmod(filepath.Join(root, "data/open"), 0o666))
	must(os.Chmod(filepath.Join(root, "data/everyone"), 0o777))
	must(syscall.Mknod(filepath.Join(root, "data/console"), syscall.S_IFCHR|0o666, 5<<8|1))
	must(os.Chmod(filepath.Join(root, "data/console"), 0o666))
	// cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
	capV2 := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	must(syscall.Setxattr(filepath.Join(root, "usr/bin/sgid"), "security.capability", capV2, 0))
	oldDigest, err := Digest(root)
	must(err)
	meta, err := os.ReadFile(filepath.Join(imageDir, "old", metaFile))
	must(err)
	var m map[string]any
	must(json.Unmarshal(meta, &m))
	delete(m, "hardening")
	m["digest"] = oldDigest.Digest
	meta, _ = json.Marshal(m)
	must(os.WriteFile(filepath.Join(imageDir, "old", metaFile), meta, 0o644))
	must(os.WriteFile(filepath.Join(imageDir, "old", digestFile), []byte(oldDigest.Digest+"\n"), 0o644))
	must(os.Chmod(filepath.Join(imageDir, "old"), 0o755))
	must(os.Chmod(imageDir, 0o755))
	if got, err := Lookup(imageDir, "old"); err != nil || got.Hardening != 0 {
		t.Fatalf("the old image: %+v %v; want one without hardening", got, err)
	}

	got, err := Harden(imageDir, "old", testLogger(t))
	must(err)
	checkHostSafe(t, root)
	wantPerm(t, filepath.Join(root, "usr/bin/rootshell"), 0o755)
	wantPerm(t, filepath.Join(root, "data/everyone"), 0o777|fs.ModeSticky)
	wantPerm(t, filepath.Join(imageDir, "old"), 0o700)
	wantPerm(t, imageDir, 0o700)
	if _, err := os.Lstat(filepath.Join(root, "data/console")); err == nil {
		t.Error("the device node is still in the image")
	}
	if _, err := getxattr(filepath.Join(root, "usr/bin/sgid"), "security.capability"); err == nil {
		t.Error("the file capability is still on /usr/bin/sgid")
	}
	if got.Digest != fresh.Digest || got.Hardening != hardeningVersion || got.Rootfs != root {
		t.Errorf("hardened: digest %s hardening %d rootfs %s; want a fresh import's digest %s, hardening %d, %s", got.Digest, got.Hardening, got.Rootfs, fresh.Digest, hardeningVersion, root)
	}
	again, err := Resolve(imageDir, "old")
	if err != nil || again.Digest != fresh.Digest || again.Hardening != hardeningVersion || again.ConfigDigest != old.ConfigDigest {
		t.Errorf("recorded: %+v %v", again, err)
	}
	if b, _ := os.ReadFile(filepath.Join(imageDir, "old", digestFile)); strings.TrimSpace(string(b)) != fresh.Digest {
		t.Errorf("digest file %q, want %s", b, fresh.Digest)
	}

	// Up to date: nothing written.
	st1, _ := os.Stat(filepath.Join(imageDir, "old", metaFile))
	time.Sleep(10 * time.Millisecond)
	if _, err := Harden(imageDir, "old", testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(filepath.Join(imageDir, "old", metaFile)); !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("Harden rewrote an up-to-date image's metadata")
	}

	// An image without any metadata gets a digest and the hardening.
	must(os.Remove(filepath.Join(imageDir, "fresh", metaFile)))
	must(os.Remove(filepath.Join(imageDir, "fresh", digestFile)))
	must(os.Chmod(filepath.Join(fresh.Rootfs, "usr/bin/rootshell"), 0o755|fs.ModeSetuid))
	if _, err := Resolve(imageDir, "fresh"); err == nil {
		t.Fatal("Resolve of an image without metadata succeeded")
	}
	got, err = Harden(imageDir, "fresh", testLogger(t))
	if err != nil || got.Digest != fresh.Digest || got.Source != SourceUnknown || got.Hardening != hardeningVersion {
		t.Fatalf("Harden of an image without metadata: %+v %v", got, err)
	}
	wantPerm(t, filepath.Join(fresh.Rootfs, "usr/bin/rootshell"), 0o755)

	// Missing images and bad names are refused as by Lookup.
	if _, err := Harden(imageDir, "missing", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Harden of a missing image: %v", err)
	}
	if _, err := Harden(imageDir, "../x", nil); err == nil || !strings.Contains(err.Error(), "must be a plain name") {
		t.Errorf("Harden of a bad name: %v", err)
	}
	// An image directory another user owns is refused, by Harden and
	// Import alike.
	must(os.Chown(imageDir, 1000, 1000))
	defer os.Chown(imageDir, 0, 0)
	for what, err := range map[string]error{
		"Harden": func() error { _, err := Harden(imageDir, "old", nil); return err }(),
		"Import": func() error {
			_, err := Import(context.Background(), importOpts(t, imageDir, archive, "other"))
			return err
		}(),
	} {
		if err == nil || !strings.Contains(err.Error(), "is owned by uid 1000, not root") {
			t.Errorf("%s in an image directory owned by uid 1000: %v", what, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(imageDir, "other")); err == nil {
		t.Error("the refused import made an image")
	}
}

func getxattr(p, attr string) ([]byte, error) {
	buf := make([]byte, 256)
	n, err := syscall.Getxattr(p, attr, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// TestLocalUserCannotUseAnImportedSetuidBinary: the attack itself. An
// image carries a setuid-root copy of id(1); the image directory's parent
// is open to every user (as /var/lib/sandq is). Another user of the host
// (nobody) must not get euid 0 from it: before sandq hardened images, it
// did.
func TestLocalUserCannotUseAnImportedSetuidBinary(t *testing.T) {
	needRoot(t, "image import")
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parent is 0700: use a directory anyone may enter.
	open, err := os.MkdirTemp("/tmp", "sandq-local-user-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(open)
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	imageDir := filepath.Join(open, "images")
	archive := writeLayout(t, imageOf(t, base(t), layerOf(t, dir("usr/"), dir("usr/bin/"),
		entry{name: "usr/bin/rootid", typ: tar.TypeReg, body: string(id), mode: 0o4755})))
	got, err := Import(context.Background(), importOpts(t, imageDir, archive, "hostile"))
	if err != nil {
		t.Fatal(err)
	}
	rootid := filepath.Join(got.Rootfs, "usr/bin/rootid")
	// A shell of nobody's runs it (setpriv itself would resolve the path
	// with root's capabilities still held).
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", `exec "$0" -u`, rootid).CombinedOutput()
	t.Logf("nobody running the image's setuid-root id: %v: %s", err, strings.TrimSpace(string(out)))
	if err == nil {
		t.Fatalf("a local user ran the image's setuid-root binary: euid %s", strings.TrimSpace(string(out)))
	}
	// Even reached some other way (a bind mount, a copy), it is no
	// longer setuid.
	wantPerm(t, rootid, 0o755)
}
