package image

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// hardeningVersion numbers the host-safety pass (harden) this sandq
// applies to every image it builds or imports, and records in the image's
// metadata. An image recorded with an older version, or none (made before
// the pass existed), is brought up to it by Harden, which a worker runs on
// its images when it starts and `image build` runs on an up-to-date image.
const hardeningVersion = 1

// An image's files belong to uids and gids of the image, which are the
// worker host's uids and gids too: an image's setuid-root binary is a
// setuid-root binary on the host, its world-writable file is writable by
// every user of the host. Inside the sandbox such bits are of no use: the
// job runs as the job user without capabilities and with no_new_privs, so
// setuid and setgid bits and file capabilities confer nothing there. So an
// image keeps none of them (see hostSafePerm), no device node, FIFO or
// socket (runsc gives the sandbox its own /dev), and it lives in a 0700
// directory under the 0700 image directory, which no other user of the
// host can enter. World-writable directories (/tmp, /var/tmp, /run/lock)
// keep their 1777: the job user must write there inside the sandbox, and on
// the host they are out of reach below those 0700 directories.

// hostSafePerm is the permission (the 12 low bits of a mode) an image's
// file or directory keeps: no setuid or setgid bit anywhere; on anything
// but a directory no sticky bit and no write bit for others; a directory
// writable by others gets the sticky bit, as /tmp has.
func hostSafePerm(perm uint32, isDir bool) uint32 {
	perm &= 0o7777 &^ (unix.S_ISUID | unix.S_ISGID)
	if isDir {
		if perm&0o002 != 0 {
			perm |= unix.S_ISVTX
		}
		return perm
	}
	return perm &^ (unix.S_ISVTX | 0o002)
}

// hardenStats says what harden changed.
type hardenStats struct {
	// Modes counts entries whose mode changed, Removed the special files
	// (device nodes, FIFOs, sockets) deleted, Caps the file capabilities
	// removed.
	Modes, Removed, Caps int
}

func (s hardenStats) changed() bool { return s.Modes+s.Removed+s.Caps > 0 }

// harden makes the tree at rootfs safe to keep on the host: every entry's
// mode made hostSafePerm, file capabilities (security.capability) removed,
// device nodes, FIFOs and sockets deleted. It never follows a symbolic
// link: the tree is walked by directory descriptor, one component at a
// time. Deterministic: two trees with the same files end the same, so
// their digests stay equal.
func harden(rootfs string) (hardenStats, error) {
	var s hardenStats
	fd, err := unix.Open(rootfs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return s, fmt.Errorf("harden: %w", &os.PathError{Op: "open", Path: rootfs, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return s, fmt.Errorf("harden: %w", &os.PathError{Op: "stat", Path: rootfs, Err: err})
	}
	if want := hostSafePerm(st.Mode&0o7777, true); want != st.Mode&0o7777 {
		if err := unix.Fchmod(fd, want); err != nil {
			return s, fmt.Errorf("harden: %w", &os.PathError{Op: "chmod", Path: rootfs, Err: err})
		}
		s.Modes++
	}
	if err := hardenDir(fd, "/", &s); err != nil {
		return s, fmt.Errorf("harden %s: %w", rootfs, err)
	}
	return s, nil
}

// hardenDir hardens the entries of directory fd, rel in the image.
func hardenDir(fd int, rel string, s *hardenStats) error {
	names, err := readDirNames(fd)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	for _, name := range names {
		p := path.Join(rel, name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		typ := st.Mode & unix.S_IFMT
		switch typ {
		case unix.S_IFLNK:
			continue // a link's own mode means nothing
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
			if err := unix.Unlinkat(fd, name, 0); err != nil {
				return fmt.Errorf("%s: remove special file: %w", p, err)
			}
			s.Removed++
			continue
		}
		isDir := typ == unix.S_IFDIR
		if err := hardenEntry(fd, name, &st, isDir, s); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if isDir {
			sub, err := openBeneath(fd, name, unix.O_RDONLY|unix.O_DIRECTORY)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			err = hardenDir(sub, p, s)
			unix.Close(sub)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// hardenEntry fixes the mode and capabilities of name, a regular file or
// directory in fd. It works on an O_PATH descriptor of the entry itself
// (through /proc/self/fd, as fchmodat's AT_SYMLINK_NOFOLLOW is not on
// every kernel), so it acts on the entry just examined and nothing else.
func hardenEntry(dirfd int, name string, st *unix.Stat_t, isDir bool, s *hardenStats) error {
	perm := st.Mode & 0o7777
	want := hostSafePerm(perm, isDir)
	regular := st.Mode&unix.S_IFMT == unix.S_IFREG
	// Only regular files carry file capabilities; check without opening.
	hasCaps := false
	if regular {
		_, err := unix.Lgetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name), "security.capability", nil)
		hasCaps = err == nil
	}
	if want == perm && !hasCaps {
		return nil
	}
	fd, err := openBeneath(dirfd, name, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	if hasCaps {
		if err := unix.Removexattr(proc, "security.capability"); err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove file capabilities: %w", err)
		}
		s.Caps++
	}
	if want != perm {
		if err := unix.Chmod(proc, want); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		s.Modes++
	}
	return nil
}

// prepareDir makes the image directory dir, 0700 and root's, or checks
// one that exists: owned by root or the running user (another owner could
// swap an image for anything), and tightened to 0700 when an older sandq left it open. Its
// parents are made 0755 when missing.
func prepareDir(dir string, logger *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("image directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("image directory: %w", err)
	}
	return tighten(dir, dir, "image directory", logger)
}

// tighten checks that directory p (shown as name) is root's, or the
// running user's (the only other user who could replace what is in it
// without root: a worker always runs as root, a test may not), and makes
// it 0700.
func tighten(p, name, what string, logger *slog.Logger) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return fmt.Errorf("%s: %w", what, &os.PathError{Op: "stat", Path: name, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s %s is not a directory", what, name)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s %s is owned by uid %d, not root: another user could replace the images in it; make it root's (chown root: %s)", what, name, st.Uid, name)
	}
	if st.Mode&0o7777 == 0o700 {
		return nil
	}
	if err := os.Chmod(p, 0o700); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	logger.Warn("made a directory of images private (0700): other users of the host could reach the images' files", "path", name, "was", fmt.Sprintf("%04o", st.Mode&0o7777))
	return nil
}

// Harden brings image name under dir up to this sandq's host safety, for an
// image made by an older one: the image directory and the image's own
// made 0700 (and checked to be root's); and, unless the image's metadata
// records the current hardening, its tree hardened (setuid and setgid
// bits, world-writable files, file capabilities and special files
// removed; see hostSafePerm), its digest computed again and recorded, and
// a warning logged with the old and new digests. An image that is up to
// date is only looked up: nothing is written. The image's directory is
// held open throughout, so a build or import swapping in a new image at
// the same time is not mixed up with the old one.
func Harden(dir, name string, logger *slog.Logger) (*Image, error) {
	return hardenImage(dir, name, logger, nil)
}

// hardenImage is Harden; update, if set, may change the image's metadata
// before it is written (only when the image needed hardening).
func hardenImage(dir, name string, logger *slog.Logger, update func(*Image)) (*Image, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if _, err := Path(dir, name); err != nil {
		return nil, err
	}
	if err := prepareDir(dir, logger); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	defer f.Close()
	pinned := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	if err := tighten(pinned, filepath.Join(dir, name), fmt.Sprintf("image %q's directory", name), logger.With("image", name)); err != nil {
		return nil, err
	}
	img, err := readMeta(pinned, name)
	if err != nil {
		return nil, err
	}
	rootfs := filepath.Join(dir, name, "rootfs")
	img.Rootfs = rootfs
	if img.Hardening >= hardeningVersion && img.Digest != "" {
		return img, nil
	}
	stats, err := harden(filepath.Join(pinned, "rootfs"))
	if err != nil {
		return nil, fmt.Errorf("image %q was made by an older sandq and could not be hardened (rebuild or re-import it): %w", name, err)
	}
	content, err := Digest(filepath.Join(pinned, "rootfs"))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	old := img.Digest
	img.Digest, img.Size, img.Files, img.Hardening = content.Digest, content.Size, content.Files, hardeningVersion
	if update != nil {
		update(img)
	}
	if err := writeMeta(pinned, img); err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	img.Rootfs = rootfs
	if stats.changed() || old != img.Digest {
		logger.Warn("hardened an image made by an older sandq (setuid/setgid and world-write bits, file capabilities, special files); its digest is recorded anew",
			"image", name, "modes_changed", stats.Modes, "special_files_removed", stats.Removed, "capabilities_removed", stats.Caps,
			"old_digest", old, "digest", img.Digest)
	}
	return img, nil
}
