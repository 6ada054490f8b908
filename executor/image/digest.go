package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Content is what Digest measured: the digest and the tree's size.
type Content struct {
	// Digest is "sha256:" and the hex hash of the tree's manifest.
	Digest string
	// Size is the total size of the regular files, in bytes (hard links
	// counted once per name).
	Size int64
	// Files counts every entry, directories included.
	Files int64
}

// Digest hashes the tree at rootfs by content. The hash is sha256 over a
// manifest of one line per entry, in sorted path order:
//
//	"<path>" <type> <mode> <uid> <gid> <size> <sha256 of content | "link target" | major:minor | ->
//
// with paths and link targets quoted, mode the permission and
// setuid/setgid/sticky bits, size 0 for anything but a regular file.
// Times, extended attributes and hard-link structure are left out, so two
// trees with the same files have the same digest wherever and whenever
// they were made.
func Digest(rootfs string) (Content, error) {
	lines, c, err := manifest(rootfs)
	if err != nil {
		return Content{}, err
	}
	h := sha256.New()
	for _, l := range lines {
		io.WriteString(h, l)
	}
	c.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return c, nil
}

type manifestEntry struct {
	rel  string
	line string
	file bool // regular file whose hash is still to be filled in
	abs  string
	st   *unix.Stat_t
}

// manifest lists the manifest lines of the tree at rootfs, sorted by path.
func manifest(rootfs string) ([]string, Content, error) {
	var entries []*manifestEntry
	var c Content
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(rootfs, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("digest: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
		}
		entries = append(entries, &manifestEntry{rel: rel, abs: p, st: &st})
		c.Files++
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			c.Size += st.Size
		}
		return nil
	})
	if err != nil {
		return nil, Content{}, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].rel < entries[j].rel })

	// Hash regular files in parallel; everything else is described inline.
	work := make(chan *manifestEntry)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range max(2, runtime.NumCPU()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				if err := e.describe(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, e := range entries {
		work <- e
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return nil, Content{}, firstErr
	}
	lines := make([]string, len(entries))
	for i, e := range entries {
		lines[i] = e.line
	}
	return lines, c, nil
}

func (e *manifestEntry) describe() error {
	st := e.st
	perm := st.Mode & 0o7777
	kind, size, extra := "other", int64(0), "-"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		kind = "dir"
	case unix.S_IFREG:
		kind, size = "file", st.Size
		sum, err := hashFile(e.abs)
		if err != nil {
			return err
		}
		extra = sum
	case unix.S_IFLNK:
		kind = "symlink"
		target, err := os.Readlink(e.abs)
		if err != nil {
			return fmt.Errorf("digest: %w", err)
		}
		extra = fmt.Sprintf("%q", target)
	case unix.S_IFCHR, unix.S_IFBLK:
		kind = "char"
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			kind = "block"
		}
		extra = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		kind = "fifo"
	case unix.S_IFSOCK:
		kind = "socket"
	}
	e.line = fmt.Sprintf("%q %s %04o %d %d %d %s\n", e.rel, kind, perm, st.Uid, st.Gid, size, extra)
	e.st = nil
	return nil
}

func hashFile(p string) (string, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("digest: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("digest: %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
