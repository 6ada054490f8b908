package image

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
)

// errLink is returned when finishing would write through a symbolic link.
var errLink = errors.New("is a symbolic link; sandq does not write through links in an image")

// finishOptions say how to make a root filesystem a sandq image.
type finishOptions struct {
	// UID and GID of the job user.
	UID, GID int
	// CAs are extra CA certificates to trust, by file name.
	CAs map[string][]byte
	// chrootUpdateCA runs the image's own update-ca-certificates in a
	// chroot. Only for trees built here from Debian packages: an imported
	// image's programs never run on the host.
	chrootUpdateCA bool
}

// finish makes a root filesystem a sandq image: the extra CAs trusted, a
// job user, the mount points and a non-empty /tmp. Build and Import both
// use it. Every write goes through an os.Root on rootfs and refuses a
// path with a symbolic link in it, so an imported tree cannot redirect a
// write outside itself or onto another file inside.
func finish(rootfs string, o finishOptions) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	t := tree{root}
	if err := t.trustCAs(rootfs, o); err != nil {
		return fmt.Errorf("CA certificates: %w", err)
	}
	if err := t.ensureUser(o.UID, o.GID); err != nil {
		return err
	}
	for _, d := range []string{"mnt/inputs", "mnt/outputs", "mnt/job", "work"} {
		if err := t.mkdirAll(d); err != nil {
			return err
		}
	}
	if err := root.Lchown("work", o.UID, o.GID); err != nil {
		return err
	}
	// runsc mounts an unbounded tmpfs over an empty /tmp; a file here keeps
	// /tmp on the size-capped root overlay.
	if err := t.mkdirAll("tmp"); err != nil {
		return err
	}
	if err := root.Chmod("tmp", 0o777|os.ModeSticky); err != nil {
		return err
	}
	return t.writeFile("tmp/.sandq", []byte("keeps /tmp on the sandbox's size-capped overlay\n"), 0o444)
}

func (t tree) trustCAs(rootfs string, o finishOptions) error {
	const dir = "usr/local/share/ca-certificates"
	if err := t.mkdirAll(dir); err != nil {
		return err
	}
	names := make([]string, 0, len(o.CAs))
	for n := range o.CAs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := t.writeFile(dir+"/"+n, o.CAs[n], 0o644); err != nil {
			return err
		}
	}
	if o.chrootUpdateCA {
		if out, err := exec.Command("chroot", rootfs, "update-ca-certificates", "--fresh").CombinedOutput(); err != nil {
			return fmt.Errorf("update-ca-certificates: %w: %s", err, out)
		}
		return nil
	}
	if len(names) == 0 {
		return nil
	}
	// An imported image: append to its bundle, where OpenSSL-based tools
	// look, if it has one.
	const bundle = "etc/ssl/certs/ca-certificates.crt"
	b, err := t.readFile(bundle)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, n := range names {
		if bytes.Contains(b, bytes.TrimSpace(o.CAs[n])) {
			continue
		}
		if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
			b = append(b, '\n')
		}
		b = append(b, o.CAs[n]...)
	}
	return t.writeFile(bundle, b, 0o644)
}

// ensureUser makes sure the image has a user with uid and a group with
// gid, adding "sandbox" (home /work) when it has none.
func (t tree) ensureUser(uid, gid int) error {
	if err := t.ensureEntry("etc/group", 2, gid, fmt.Sprintf("sandbox:x:%d:", gid)); err != nil {
		return err
	}
	return t.ensureEntry("etc/passwd", 2, uid, fmt.Sprintf("sandbox:x:%d:%d:sandq job:/work:/bin/sh", uid, gid))
}

// ensureEntry appends line to the colon-separated file unless a line has
// id in field idField; a "sandbox" entry with another id is an error.
func (t tree) ensureEntry(file string, idField, id int, line string) error {
	b, err := t.readFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) <= idField {
			continue
		}
		if n, err := strconv.Atoi(f[idField]); err == nil && n == id {
			return nil
		}
		if f[0] == "sandbox" {
			return fmt.Errorf("/%s: the image has a %q entry with id %s, not %d", file, f[0], f[idField], id)
		}
	}
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	return t.writeFile(file, append(b, line+"\n"...), 0o644)
}

// tree writes into a root filesystem without following symbolic links.
type tree struct{ root *os.Root }

// checkNoLinks fails if any existing component of rel is a symbolic link
// or a non-final one is not a directory.
func (t tree) checkNoLinks(rel string) error {
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		st, err := t.root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("/%s %w", p, errLink)
		}
		if i < len(parts)-1 && !st.IsDir() {
			return fmt.Errorf("/%s: not a directory", p)
		}
	}
	return nil
}

func (t tree) mkdirAll(rel string) error {
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		st, err := t.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := t.root.Mkdir(p, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case st.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("/%s %w", p, errLink)
		case !st.IsDir():
			return fmt.Errorf("/%s: not a directory", p)
		}
	}
	return nil
}

func (t tree) readFile(rel string) ([]byte, error) {
	if err := t.checkNoLinks(rel); err != nil {
		return nil, err
	}
	return t.root.ReadFile(rel)
}

func (t tree) writeFile(rel string, b []byte, perm os.FileMode) error {
	if err := t.mkdirAll(path.Dir(rel)); err != nil {
		return err
	}
	if err := t.checkNoLinks(rel); err != nil {
		return err
	}
	f, err := t.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
