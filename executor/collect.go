package executor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// OutputFile is a regular file a job left in its outputs directory.
type OutputFile struct {
	// Path is relative to the outputs directory, with forward slashes.
	Path string
	Size int64
}

// SkippedOutput is an entry of the outputs directory that is not collected.
// Path is shown escaped (Go string syntax, without the quotes) when the name
// is not valid UTF-8 or has control characters, and cut to
// MaxOutputPathBytes (ending in "…") when longer.
type SkippedOutput struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Reason string `json:"reason"`
}

// MaxOutputPathBytes caps the length of an output's path relative to the
// outputs directory. A longer entry is skipped, a directory without walking
// into it, so a chain of directories deeper than PATH_MAX never fails the
// walk.
const MaxOutputPathBytes = 1024

// MaxSkippedListed is how many skipped entries a Collection lists; the rest
// are only counted, in SkippedOmitted.
const MaxSkippedListed = 100

// Collection is what was found in an outputs directory.
type Collection struct {
	Files []OutputFile
	// Skipped lists the first MaxSkippedListed entries not collected.
	Skipped []SkippedOutput
	// SkippedOmitted counts the entries not collected beyond those listed.
	SkippedOmitted int
	TotalBytes     int64
	root           string
}

// CollectOutputs lists the regular files under root without following any
// symbolic link. FIFOs, sockets, devices and links are reported as skipped,
// and so are entries whose name is not valid UTF-8 or has control
// characters, or whose path is longer than MaxOutputPathBytes (a directory
// is then not walked into). At most maxFiles files and maxBytes bytes are
// collected; the rest is skipped with a reason. A job's names never fail the
// walk: only an error of the host's file system does. Call it only once
// nothing else writes under root.
func CollectOutputs(root string, maxFiles int, maxBytes int64) (*Collection, error) {
	c := &Collection{root: root}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if p == root {
			if err != nil {
				return fmt.Errorf("walk outputs: %w", err)
			}
			return nil
		}
		rel, rerr := filepath.Rel(root, p)
		if rerr != nil {
			return rerr
		}
		rel = filepath.ToSlash(rel)
		var t fs.FileMode
		if d != nil {
			t = d.Type()
		}
		if err != nil {
			// A name too long for the host's own path limit is the job's
			// doing; anything else is the host's.
			if errors.Is(err, unix.ENAMETOOLONG) {
				c.skip(rel, t, "path too long for the host to read")
				return skipEntry(d)
			}
			return fmt.Errorf("walk outputs: %w", err)
		}
		name := d.Name()
		switch {
		case !utf8.ValidString(name):
			c.skip(rel, t, "name is not valid UTF-8 (path shown escaped)")
			return skipEntry(d)
		case strings.ContainsFunc(name, unicode.IsControl):
			c.skip(rel, t, "name has control characters (path shown escaped)")
			return skipEntry(d)
		case len(rel) > MaxOutputPathBytes:
			c.skip(rel, t, fmt.Sprintf("path of %d bytes is over the %d-byte cap", len(rel), MaxOutputPathBytes))
			return skipEntry(d)
		case d.IsDir():
			return nil
		case !t.IsRegular():
			c.skip(rel, t, "not a regular file")
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, unix.ENAMETOOLONG) {
			c.skip(rel, t, "path too long for the host to read")
			return nil
		}
		if err != nil {
			return fmt.Errorf("stat output %s: %w", rel, err)
		}
		switch {
		case len(c.Files) >= maxFiles:
			c.skip(rel, t, fmt.Sprintf("over the output file cap (%d)", maxFiles))
		case c.TotalBytes+info.Size() > maxBytes:
			c.skip(rel, t, fmt.Sprintf("over the output size cap (%d bytes)", maxBytes))
		default:
			c.Files = append(c.Files, OutputFile{Path: rel, Size: info.Size()})
			c.TotalBytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// skipEntry is what the walk returns for an entry it skips: a directory is
// not walked into.
func skipEntry(d fs.DirEntry) error {
	if d != nil && d.IsDir() {
		return filepath.SkipDir
	}
	return nil
}

func (c *Collection) skip(rel string, t fs.FileMode, reason string) {
	if len(c.Skipped) >= MaxSkippedListed {
		c.SkippedOmitted++
		return
	}
	c.Skipped = append(c.Skipped, SkippedOutput{Path: ShowPath(rel), Type: typeName(t), Reason: reason})
}

// ShowPath is a path fit to show: escaped (Go string syntax without the
// quotes) when it is not valid UTF-8 or has control characters, and cut to
// MaxOutputPathBytes, ending in "…", when longer.
func ShowPath(p string) string {
	if !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) {
		q := strconv.Quote(p)
		p = q[1 : len(q)-1]
	}
	if len(p) <= MaxOutputPathBytes {
		return p
	}
	cut := MaxOutputPathBytes
	for cut > 0 && !utf8.RuneStart(p[cut]) {
		cut--
	}
	return p[:cut] + "…"
}

// Open opens a collected file for reading. It resolves the path beneath the
// outputs directory refusing every symbolic link on the way, and checks that
// what it opened is still a regular file of the collected size, so a file
// swapped for a link or a FIFO after listing is refused, not followed.
func (c *Collection) Open(f OutputFile) (*os.File, error) {
	dir, err := os.Open(c.root)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd, err := unix.Openat2(int(dir.Fd()), f.Path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, fmt.Errorf("open output %s: %w", f.Path, err)
	}
	file := os.NewFile(uintptr(fd), f.Path)
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("stat output %s: %w", f.Path, err)
	}
	if !st.Mode().IsRegular() || st.Size() != f.Size {
		file.Close()
		return nil, fmt.Errorf("output %s changed after it was listed", f.Path)
	}
	return file, nil
}

func typeName(t fs.FileMode) string {
	switch {
	case t.IsDir():
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symlink"
	case t&fs.ModeNamedPipe != 0:
		return "fifo"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeCharDevice != 0:
		return "char_device"
	case t&fs.ModeDevice != 0:
		return "block_device"
	case t.IsRegular():
		return "file"
	}
	return "other"
}
