package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Errors of extraction, for errors.Is.
var (
	// ErrUnsafeEntry marks an archive entry refused because it would
	// reach outside the root: an absolute path, a ".." component, a path
	// through a symbolic link, or a hard link to outside the image.
	ErrUnsafeEntry = errors.New("unsafe archive entry")
	// ErrTooLarge marks an image over the size or entry-count cap.
	ErrTooLarge = errors.New("image too large")
)

// Whiteout names of the OCI image layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// extractor applies image layers, in order, to a root directory. Every
// path is resolved beneath the root with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS) one component at a time, so no entry can write
// outside the root or through a symbolic link already in it, whatever the
// order of the entries.
type extractor struct {
	rootFd int
	// b counts entries and bytes against the import's caps; the layer
	// streams given to applyLayer are counted by it already.
	b      *budget
	logger *slog.Logger

	skipped int
	// layer holds the paths the current layer made, which an opaque
	// whiteout in the same layer keeps.
	layer map[string]bool
}

func newExtractor(root string, b *budget, logger *slog.Logger) (*extractor, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return &extractor{rootFd: fd, b: b, logger: logger}, nil
}

func (x *extractor) close() { unix.Close(x.rootFd) }

// applyLayer extracts one uncompressed layer tar stream. n numbers the
// layer for errors.
func (x *extractor) applyLayer(ctx context.Context, n int, r io.Reader) error {
	x.layer = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %d: %w", n, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := x.apply(hdr, tr); err != nil {
			return fmt.Errorf("layer %d: entry %q: %w", n, hdr.Name, err)
		}
	}
}

// entryPath checks an archive path and returns it cleaned and relative to
// the root ("." for the root itself).
func entryPath(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty path", ErrUnsafeEntry)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path", ErrUnsafeEntry)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: path has a \"..\" component", ErrUnsafeEntry)
		}
	}
	return path.Clean(name), nil
}

func (x *extractor) apply(hdr *tar.Header, r io.Reader) error {
	if err := x.b.entry(); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // pax defaults (git archive writes one), not a file
	}
	rel, err := entryPath(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(rel)
	dir = path.Clean(dir)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return x.whiteout(dir, base)
	}
	if rel == "." {
		return nil // the root itself: it stays as sandq made it
	}
	typ := hdr.Typeflag
	if typ == tar.TypeGNUSparse || typ == tar.TypeCont {
		typ = tar.TypeReg // the reader expands sparse files
	}
	switch typ {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		// The sandbox gets its own /dev from runsc; an image needs none.
		x.skipped++
		x.logger.Debug("skipped special file in image archive", "entry", hdr.Name, "type", string(hdr.Typeflag))
		return nil
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	if typ == tar.TypeReg {
		// Refused before its body is read; the body is then counted as
		// the layer's stream is read, and a sparse file's holes, which
		// are not in the stream, are charged whole.
		if err := x.b.fits(hdr.Size); err != nil {
			return err
		}
		if isSparse(hdr) {
			if err := x.b.charge(hdr.Size); err != nil {
				return err
			}
		}
	}
	pfd, err := x.openDir(dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	x.layer[rel] = true
	// No setuid/setgid or world-write bits on the host, ever (see
	// hostSafePerm); world-writable directories such as /tmp stay 1777.
	uid, gid, mode := hdr.Uid, hdr.Gid, hostSafePerm(uint32(hdr.Mode&0o7777), typ == tar.TypeDir)
	if typ == tar.TypeDir {
		var st unix.Stat_t
		err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := removeAt(pfd, base); err != nil {
				return err
			}
			err = unix.ENOENT
		}
		if errors.Is(err, unix.ENOENT) {
			err = unix.Mkdirat(pfd, base, 0o700)
		}
		if err != nil {
			return err
		}
		fd, err := openBeneath(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		return unix.Fchmod(fd, mode)
	}
	// Anything else replaces what is there.
	if err := removeAt(pfd, base); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	switch typ {
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		if err := unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	case tar.TypeLink:
		if err := x.hardlink(hdr.Linkname, rel, pfd, base); err != nil {
			return err
		}
		return nil // the link shares its target's owner, mode and times
	case tar.TypeReg:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), base)
		_, err = io.CopyN(f, r, hdr.Size)
		if err == nil {
			err = f.Chown(uid, gid)
		}
		if err == nil {
			err = unix.Fchmod(fd, mode) // after chown, which clears setuid
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	// Keep modification times, which Python's byte-code caches check.
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// hardlink links rel (base in pfd) to target, an existing non-directory
// inside the root reached without symbolic links.
func (x *extractor) hardlink(target, rel string, pfd int, base string) error {
	t, err := entryPath(target)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", target, err)
	}
	if t == "." || t == rel {
		return fmt.Errorf("%w: hard link to %q", ErrUnsafeEntry, target)
	}
	tdir, tbase := path.Split(t)
	tfd, err := x.openDir(path.Clean(tdir), false)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", target, err)
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("hard link to %q: %w", target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: hard link to directory %q", ErrUnsafeEntry, target)
	}
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hard link to %q: %w", target, err)
	}
	return nil
}

// whiteout applies a whiteout entry base in dir: ".wh..wh..opq" hides what
// lower layers put in dir; ".wh.NAME" deletes NAME.
func (x *extractor) whiteout(dir, base string) error {
	if base == whiteoutOpaque {
		fd, err := x.openDir(dir, true)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		x.layer[dir] = true
		return x.removeLower(fd, dir)
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if strings.HasPrefix(name, whiteoutPrefix) {
		return nil // other AUFS metadata (.wh..wh.plnk and the like)
	}
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("%w: whiteout of %q", ErrUnsafeEntry, name)
	}
	target := path.Join(dir, name)
	if x.layer[target] {
		return nil // made by this same layer, which it cannot hide
	}
	fd, err := x.openDir(dir, false)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := removeAt(fd, name); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// removeLower deletes what lower layers left in directory dir (open as
// fd): everything the current layer did not make.
func (x *extractor) removeLower(fd int, dir string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if !x.layer[p] {
			if err := removeAt(fd, n); err != nil {
				return err
			}
			continue
		}
		sub, err := openBeneath(fd, n, unix.O_RDONLY|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue
		}
		if err != nil {
			return err
		}
		err = x.removeLower(sub, p)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// openDir opens directory rel beneath the root one component at a time,
// never through a symbolic link, making missing directories when create
// is set. The caller closes the descriptor.
func (x *extractor) openDir(rel string, create bool) (int, error) {
	fd, err := unix.Dup(x.rootFd)
	if err != nil {
		return -1, err
	}
	if rel == "." {
		return fd, nil
	}
	walked := ""
	for _, c := range strings.Split(rel, "/") {
		walked = path.Join(walked, c)
		next, err := openBeneath(fd, c, unix.O_RDONLY|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil {
				x.layer[walked] = true
				next, err = openBeneath(fd, c, unix.O_RDONLY|unix.O_DIRECTORY)
			}
		}
		if errors.Is(err, unix.ENOTDIR) && isSymlinkAt(fd, c) {
			err = unix.ELOOP // O_NOFOLLOW|O_DIRECTORY on a link fails ENOTDIR
		}
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.ELOOP):
			return -1, fmt.Errorf("%w: %s is a symbolic link", ErrUnsafeEntry, walked)
		case errors.Is(err, unix.ENOTDIR):
			return -1, fmt.Errorf("%s is not a directory: %w", walked, err)
		case err != nil:
			return -1, fmt.Errorf("%s: %w", walked, err)
		}
		fd = next
	}
	return fd, nil
}

func isSymlinkAt(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// openBeneath opens name, one path component, in directory dirfd without
// following a symbolic link or leaving the directory.
func openBeneath(dirfd int, name string, flags int) (int, error) {
	return unix.Openat2(dirfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
}

// removeAt deletes name in dirfd, and everything below it if it is a
// directory, without following symbolic links.
func removeAt(dirfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(dirfd, name, 0)
	}
	fd, err := openBeneath(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	for _, n := range names {
		if err == nil {
			err = removeAt(fd, n)
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// readDirNames lists directory fd (which stays open).
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}
