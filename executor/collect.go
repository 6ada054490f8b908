package executor

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
type SkippedOutput struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Reason string `json:"reason"`
}

// Collection is what was found in an outputs directory.
type Collection struct {
	Files      []OutputFile
	Skipped    []SkippedOutput
	TotalBytes int64
	root       string
}

// CollectOutputs lists the regular files under root without following any
// symbolic link. FIFOs, sockets, devices and links are reported as skipped.
// At most maxFiles files and maxBytes bytes are collected; the rest is
// skipped with a reason. Call it only once nothing else writes under root.
func CollectOutputs(root string, maxFiles int, maxBytes int64) (*Collection, error) {
	c := &Collection{root: root}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk outputs: %w", err)
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !utf8.ValidString(rel) {
			c.skip(rel, d.Type(), "name is not valid UTF-8")
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			c.skip(rel, d.Type(), "not a regular file")
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat output %s: %w", rel, err)
		}
		switch {
		case len(c.Files) >= maxFiles:
			c.skip(rel, d.Type(), fmt.Sprintf("over the output file cap (%d)", maxFiles))
		case c.TotalBytes+info.Size() > maxBytes:
			c.skip(rel, d.Type(), fmt.Sprintf("over the output size cap (%d bytes)", maxBytes))
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

func (c *Collection) skip(rel string, t fs.FileMode, reason string) {
	c.Skipped = append(c.Skipped, SkippedOutput{Path: rel, Type: typeName(t), Reason: reason})
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
