package image

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// normalize removes from a freshly built tree what differs between two
// builds of the same packages, or describes the build host rather than the
// image, so that its digest is stable:
//
//   - logs (everything under /var/log, directories kept);
//   - apt's package lists, archives and binary caches, which also makes
//     the image smaller (the lists are fetched again by `apt-get update`);
//   - ldconfig's aux-cache and the -old backups of dpkg and debconf;
//   - /etc/machine-id emptied (systemd's "not yet set"), dbus's removed;
//   - /etc/hostname and /etc/resolv.conf, which debootstrap copies from
//     the host, replaced (a sandbox's only way out is its egress proxy,
//     so it has no use for the host's name servers).
func normalize(rootfs string) error {
	at := func(rel string) string { return filepath.Join(rootfs, rel) }
	var errs []error
	// Regular files under these directories; the directories stay.
	for _, dir := range []string{"var/log", "var/lib/apt/lists", "var/cache/apt/archives"} {
		errs = append(errs, removeFilesUnder(at(dir)))
	}
	globs := []string{
		"var/cache/apt/*.bin",
		"var/cache/ldconfig/aux-cache",
		"var/cache/debconf/*-old",
		"var/lib/dpkg/*-old",
		"var/lib/dbus/machine-id",
		"etc/*-", // passwd-, group-, shadow-, gshadow-: backups written by the user tools
	}
	for _, g := range globs {
		matches, _ := filepath.Glob(at(g))
		for _, m := range matches {
			if st, err := os.Lstat(m); err == nil && !st.IsDir() {
				errs = append(errs, os.Remove(m))
			}
		}
	}
	if _, err := os.Lstat(at("etc/machine-id")); err == nil {
		errs = append(errs, os.WriteFile(at("etc/machine-id"), nil, 0o444))
	}
	errs = append(errs,
		replaceFile(at("etc/hostname"), "sandbox\n"),
		replaceFile(at("etc/resolv.conf"), "# sandboxes reach the network only through their egress proxy\n"),
	)
	return errors.Join(errs...)
}

// removeFilesUnder deletes every non-directory below dir.
func removeFilesUnder(dir string) error {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return os.Remove(p)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// replaceFile writes content to p as a new regular file, whatever was there.
func replaceFile(p, content string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.WriteFile(p, []byte(content), 0o644)
}
