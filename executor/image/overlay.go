package image

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// overlayEntry is a directory or regular file of a build overlay, by its
// slash-separated path relative to the overlay (and to the image's root).
// Modes are normalized as git does, so that a checkout's umask changes
// neither the stamp nor the digest: directories 0755, files 0755 when the
// source has an execute bit and 0644 otherwise.
type overlayEntry struct {
	Path string
	Dir  bool
	Perm fs.FileMode
	Data []byte
}

// readOverlay reads a build overlay: the directories and regular files
// under dir, in lexical order. Anything else (a symbolic link, a device) is
// an error naming it, and so is a path under /mnt (sandq mounts over it) or
// /work (the job user's home, which the job must own).
func readOverlay(dir string) ([]overlayEntry, error) {
	var out []overlayEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			if !d.IsDir() {
				return fmt.Errorf("not a directory")
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if top, _, _ := strings.Cut(rel, "/"); top == "mnt" || top == "work" {
			return fmt.Errorf("%s: /%s belongs to the sandbox (mount points, the job's home), not to the image's files", rel, top)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			out = append(out, overlayEntry{Path: rel, Dir: true, Perm: 0o755})
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			perm := fs.FileMode(0o644)
			if info.Mode().Perm()&0o111 != 0 {
				perm = 0o755
			}
			out = append(out, overlayEntry{Path: rel, Perm: perm, Data: b})
		default:
			return fmt.Errorf("%s: only directories and regular files can be overlaid, not %s", rel, info.Mode().Type())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", dir, err)
	}
	return out, nil
}

// overlayStamp is what the overlay adds to a build stamp: one line per
// entry, with its mode and the hash of its content.
func overlayStamp(entries []overlayEntry) string {
	var b strings.Builder
	for _, e := range entries {
		if e.Dir {
			fmt.Fprintf(&b, "overlay %q dir\n", e.Path)
			continue
		}
		fmt.Fprintf(&b, "overlay %q file %o %x\n", e.Path, e.Perm, sha256.Sum256(e.Data))
	}
	return b.String()
}

// applyOverlay writes the overlay's entries into rootfs: files owned by
// root, replacing what the packages installed there; directories made
// (owned by root) where missing, left as they are where present. Like
// finishing, it never writes through a symbolic link in the tree: a path
// through one (say /bin, a link to /usr/bin) is an error.
func applyOverlay(rootfs string, entries []overlayEntry) error {
	if len(entries) == 0 {
		return nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	t := tree{root}
	for _, e := range entries {
		if err := t.overlay(e); err != nil {
			return fmt.Errorf("overlay /%s: %w", e.Path, err)
		}
	}
	return nil
}

func (t tree) overlay(e overlayEntry) error {
	_, serr := t.root.Lstat(e.Path)
	existed := serr == nil
	if e.Dir {
		if err := t.mkdirAll(e.Path); err != nil || existed {
			return err // an existing directory keeps its owner and mode
		}
		if err := t.root.Chmod(e.Path, e.Perm); err != nil {
			return err
		}
		return t.root.Lchown(e.Path, 0, 0)
	}
	if err := t.checkNoLinks(e.Path); err != nil {
		return err
	}
	// A new file, not the old one truncated: that one may be a hard link
	// to another file of the image.
	if existed {
		if err := t.root.Remove(e.Path); err != nil {
			return err
		}
	}
	if err := t.writeFile(e.Path, e.Data, e.Perm); err != nil {
		return err
	}
	return t.root.Lchown(e.Path, 0, 0)
}

// overlayPaths lists the overlay's files, for the image's metadata.
func overlayPaths(entries []overlayEntry) []string {
	var out []string
	for _, e := range entries {
		if !e.Dir {
			out = append(out, e.Path)
		}
	}
	return out
}
