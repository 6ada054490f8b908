// Package image builds sandbox root filesystems from Debian packages with
// debootstrap, and finds them for workers.
//
// An image is a directory NAME under the image directory holding rootfs/
// (the root filesystem, shared read-only by every sandbox) and stamp (a hash
// of everything that went into the build: suite, mirror, package list, the
// host's extra CA certificates, the job user). A build whose stamp matches is
// skipped, so building an image already built is instant; debootstrap's
// download cache is kept across builds.
package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// stampVersion changes when what Build puts in an image changes.
const stampVersion = "sandq-image-v2"

// BuildOptions describe an image build.
type BuildOptions struct {
	// Name of the image, a plain name.
	Name string
	// Dir is the image directory. Default /var/lib/sandq/images.
	Dir string
	// Packages to include, beyond debootstrap's minimal base.
	Packages []string
	// Suite is the Debian release. Default bookworm.
	Suite string
	// Mirror is the Debian mirror; default: the host's configured one.
	Mirror string
	// CacheDir keeps downloaded packages across builds (debootstrap's in
	// debootstrap/, apt's in apt/). Default /var/cache/sandq.
	CacheDir string
	// CADir holds the host's extra CA certificates (*.crt), trusted inside
	// the image. Default /usr/local/share/ca-certificates.
	CADir string
	// UID and GID of the job user "sandbox". Default 1000.
	UID, GID int
	// Force rebuilds even when the stamp matches.
	Force  bool
	Logger *slog.Logger
}

func (o *BuildOptions) defaults() {
	if o.Dir == "" {
		o.Dir = "/var/lib/sandq/images"
	}
	if o.Suite == "" {
		o.Suite = "bookworm"
	}
	if o.Mirror == "" {
		o.Mirror = HostMirror()
	}
	if o.CacheDir == "" {
		o.CacheDir = "/var/cache/sandq"
	}
	if o.CADir == "" {
		o.CADir = "/usr/local/share/ca-certificates"
	}
	if o.UID == 0 {
		o.UID = 1000
	}
	if o.GID == 0 {
		o.GID = 1000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Image is a built image.
type Image struct {
	Name   string
	Rootfs string
	Stamp  string
	// Cached is set when the build was skipped.
	Cached bool
}

// Build builds an image, or returns the existing one when nothing that goes
// into it has changed.
func Build(ctx context.Context, o BuildOptions) (*Image, error) {
	o.defaults()
	if o.Name == "" || filepath.Base(o.Name) != o.Name || strings.HasPrefix(o.Name, ".") {
		return nil, fmt.Errorf("image name %q: must be a plain name", o.Name)
	}
	for _, p := range o.Packages {
		if p == "" || strings.ContainsAny(p, ", \t\n") || strings.HasPrefix(p, "-") {
			return nil, fmt.Errorf("package %q: not a package name", p)
		}
	}
	if o.Mirror == "" {
		return nil, errors.New("no Debian mirror is configured in this host's apt sources; pass --mirror (SANDQ_DEBIAN_MIRROR)")
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		return nil, fmt.Errorf("debootstrap not found: %w; install it with scripts/install-deps.sh", err)
	}
	cas, err := hostCAs(o.CADir)
	if err != nil {
		return nil, err
	}
	stamp := buildStamp(o, cas)
	final := filepath.Join(o.Dir, o.Name)
	img := &Image{Name: o.Name, Rootfs: filepath.Join(final, "rootfs"), Stamp: stamp}
	if !o.Force {
		if old, err := os.ReadFile(filepath.Join(final, "stamp")); err == nil && strings.TrimSpace(string(old)) == stamp {
			img.Cached = true
			return img, nil
		}
	}
	for _, d := range []string{o.Dir, filepath.Join(o.CacheDir, "debootstrap")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	tmp := filepath.Join(o.Dir, ".build-"+o.Name+"-"+randomHex())
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	rootfs := filepath.Join(tmp, "rootfs")
	// debootstrap makes the minimal base; apt inside it then installs the
	// packages, with proper dependency ordering (debootstrap's --include
	// fails to configure some, npm among them).
	args := []string{"--variant=minbase", "--cache-dir=" + filepath.Join(o.CacheDir, "debootstrap"), "--include=ca-certificates", o.Suite, rootfs, o.Mirror}
	o.Logger.Info("building image", "image", o.Name, "packages", strings.Join(o.Packages, " "), "mirror", o.Mirror)
	logPath := filepath.Join(o.Dir, "."+o.Name+".build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, debootstrap, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = cmd.Run()
	logFile.Close()
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(rootfs, "debootstrap", "debootstrap.log")); rerr == nil {
			os.WriteFile(logPath, b, 0o644)
		}
		return nil, fmt.Errorf("debootstrap %s: %w\n%s(full log: %s)", o.Name, err, tailOf(logPath, 2000), logPath)
	}
	if len(o.Packages) > 0 {
		if err := aptInstall(ctx, rootfs, filepath.Join(o.CacheDir, "apt"), o.Packages, logPath); err != nil {
			return nil, fmt.Errorf("image %s: %w\n%s(full log: %s)", o.Name, err, tailOf(logPath, 2000), logPath)
		}
	}
	if err := finish(rootfs, o, cas); err != nil {
		return nil, fmt.Errorf("image %s: %w", o.Name, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "stamp"), []byte(stamp+"\n"), 0o644); err != nil {
		return nil, err
	}
	// Swap the new build in. Sandboxes running on the old tree hold it open
	// by its directory, not its name, so it is kept for a day (longer than
	// any job may run) and removed by a later build.
	old := filepath.Join(o.Dir, ".old-"+o.Name+"-"+randomHex())
	if err := os.Rename(final, old); err == nil {
		now := time.Now()
		os.Chtimes(old, now, now) // marks when it was replaced
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	removeOldTrees(o.Dir, 24*time.Hour)
	os.Remove(logPath)
	return img, nil
}

// removeOldTrees deletes replaced images older than age.
func removeOldTrees(dir string, age time.Duration) {
	olds, _ := filepath.Glob(filepath.Join(dir, ".old-*"))
	for _, o := range olds {
		if st, err := os.Stat(o); err == nil && time.Since(st.ModTime()) > age {
			os.RemoveAll(o)
		}
	}
}

// aptInstall installs packages inside rootfs with its own apt, the host's
// package cache directory bind-mounted as apt's archive cache so that
// rebuilds reuse downloads. Services are kept from starting.
func aptInstall(ctx context.Context, rootfs, cache string, pkgs []string, logPath string) (err error) {
	archives := filepath.Join(rootfs, "var/cache/apt/archives")
	for _, d := range []string{filepath.Join(cache, "partial"), archives} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	policy := filepath.Join(rootfs, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	defer os.Remove(policy)
	proc := filepath.Join(rootfs, "proc")
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	defer unix.Unmount(proc, unix.MNT_DETACH)
	if err := unix.Mount(cache, archives, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the package cache: %w", err)
	}
	defer unix.Unmount(archives, unix.MNT_DETACH)
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "chroot", append([]string{rootfs}, args...)...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	if err := run("apt-get", "update", "-q"); err != nil {
		return err
	}
	return run(append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, pkgs...)...)
}

// finish makes a debootstrapped tree a sandq image: the host's extra CAs
// trusted, the job user, the mount points and a non-empty /tmp.
func finish(rootfs string, o BuildOptions, cas map[string][]byte) error {
	caDir := filepath.Join(rootfs, "usr/local/share/ca-certificates")
	if err := os.MkdirAll(caDir, 0o755); err != nil {
		return err
	}
	for name, b := range cas {
		if err := os.WriteFile(filepath.Join(caDir, name), b, 0o644); err != nil {
			return err
		}
	}
	if out, err := exec.Command("chroot", rootfs, "update-ca-certificates", "--fresh").CombinedOutput(); err != nil {
		return fmt.Errorf("update-ca-certificates: %w: %s", err, out)
	}
	if err := appendLine(filepath.Join(rootfs, "etc/group"), fmt.Sprintf("sandbox:x:%d:", o.GID)); err != nil {
		return err
	}
	if err := appendLine(filepath.Join(rootfs, "etc/passwd"), fmt.Sprintf("sandbox:x:%d:%d:sandq job:/work:/bin/bash", o.UID, o.GID)); err != nil {
		return err
	}
	for _, d := range []string{"mnt/inputs", "mnt/outputs", "mnt/job", "work"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chown(filepath.Join(rootfs, "work"), o.UID, o.GID); err != nil {
		return err
	}
	// runsc mounts an unbounded tmpfs over an empty /tmp; a file here keeps
	// /tmp on the size-capped root overlay.
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o777|os.ModeSticky); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "tmp/.sandq"), []byte("keeps /tmp on the sandbox's size-capped overlay\n"), 0o444); err != nil {
		return err
	}
	for _, g := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
		matches, _ := filepath.Glob(filepath.Join(rootfs, g, "*"))
		for _, m := range matches {
			if st, err := os.Lstat(m); err == nil && st.Mode().IsRegular() {
				os.Remove(m)
			}
		}
	}
	return nil
}

func appendLine(path, line string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	name := strings.SplitN(line, ":", 2)[0] + ":"
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			return nil
		}
	}
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	return os.WriteFile(path, append(b, line+"\n"...), 0o644)
}

// hostCAs reads the host's extra CA certificates.
func hostCAs(dir string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return filepath.SkipAll
			}
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".crt") {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			out[strings.ReplaceAll(rel, "/", "_")] = b
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("host CA certificates in %s: %w", dir, err)
	}
	return out, nil
}

func buildStamp(o BuildOptions, cas map[string][]byte) string {
	h := sha256.New()
	pkgs := append([]string(nil), o.Packages...)
	sort.Strings(pkgs)
	fmt.Fprintf(h, "%s\nsuite=%s\nmirror=%s\nuid=%d gid=%d\npackages=%s\n", stampVersion, o.Suite, o.Mirror, o.UID, o.GID, strings.Join(pkgs, ","))
	names := make([]string, 0, len(cas))
	for n := range cas {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sum := sha256.Sum256(cas[n])
		fmt.Fprintf(h, "ca %s %x\n", n, sum)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ReadPackagesFile reads package names, one or more a line; # starts a comment.
func ReadPackagesFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pkgs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		pkgs = append(pkgs, strings.Fields(line)...)
	}
	return pkgs, sc.Err()
}

// HostMirror is the Debian mirror apt on this host uses, or "" when none
// is configured.
func HostMirror() string {
	if m := mirrorFromDeb822("/etc/apt/sources.list.d/debian.sources"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if m := mirrorFromDeb822(f); m != "" {
			return m
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "deb" && !strings.HasPrefix(f[2], "[") && strings.HasSuffix(strings.TrimSuffix(f[1], "/"), "/debian") {
				return f[1]
			}
		}
	}
	return ""
}

// mirrorFromDeb822 finds the URI of a stanza serving the main suite (not
// -security or -updates) whose path ends in /debian.
func mirrorFromDeb822(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(b), "\n\n") {
		var uris, suites []string
		for _, l := range strings.Split(stanza, "\n") {
			if v, ok := strings.CutPrefix(l, "URIs:"); ok {
				uris = strings.Fields(v)
			}
			if v, ok := strings.CutPrefix(l, "Suites:"); ok {
				suites = strings.Fields(v)
			}
		}
		plain := false
		for _, s := range suites {
			if !strings.Contains(s, "-") {
				plain = true
			}
		}
		for _, u := range uris {
			if plain && strings.HasSuffix(strings.TrimSuffix(u, "/"), "/debian") {
				return u
			}
		}
	}
	return ""
}

// Path is the root filesystem of image name under dir, checked to exist.
func Path(dir, name string) (string, error) {
	p := filepath.Join(dir, name, "rootfs")
	if st, err := os.Stat(filepath.Join(p, "bin")); err != nil || !st.IsDir() {
		return "", fmt.Errorf("image %q not found in %s; build it with `sandq image build %s --packages-file FILE`", name, dir, name)
	}
	return p, nil
}

func tailOf(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

func randomHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}
