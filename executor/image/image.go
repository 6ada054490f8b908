// Package image makes and finds sandbox root filesystems: built from
// Debian packages with debootstrap, or imported from an OCI image layout or
// a `docker save` archive.
//
// An image is a directory NAME under the image directory holding rootfs/
// (the root filesystem, shared read-only by every sandbox), digest (the
// content digest of rootfs, see Digest) and image.json (name, digest,
// source, creation time, size, and what it was made from). Built images
// also have stamp, a hash of everything that went into the build: suite,
// mirror, package list, overlay files, the host's extra CA certificates,
// the job user. A build whose stamp matches is skipped, so building an
// image already built is instant; debootstrap's and apt's download caches
// are kept across builds, also when the package list changes.
//
// Images are kept safe for the host they sit on (see Harden): the image
// directory and each image's directory are 0700 and root's, and an image's
// tree has no setuid or setgid bit, no world-writable file, no file
// capability and no device node, whatever its packages or archive asked
// for. image.json records the version of that hardening; a worker hardens
// an image made by an older sandq when it starts.
package image

import (
	"bufio"
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
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// stampVersion changes when what Build puts in an image changes.
const stampVersion = "sandq-image-v3"

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
	// Overlay is a directory of files copied into the image after the
	// packages are installed (config files such as /etc/pip.conf), owned
	// by root. Optional. Its files are part of the stamp.
	Overlay string
	// Preload is the image's preload list (see Image.Preload). It is not
	// part of the stamp: changing it rewrites the metadata of an image
	// otherwise up to date, never its tree.
	Preload []string
	// Force rebuilds even when the stamp matches.
	Force  bool
	Logger *slog.Logger
	// Progress, if set, is told of the build's phases as they start and
	// end, and of debootstrap's and apt's package counts (see Event). It
	// is called one event at a time, from the building goroutine or the
	// one reading the tools' output, and should return quickly. A build
	// skipped as up to date reports nothing.
	Progress func(Event)
}

func (o *BuildOptions) defaults() {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Mirror == "" {
		o.Mirror = HostMirror()
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	if o.CADir == "" {
		o.CADir = DefaultCADir
	}
	if o.UID == 0 {
		o.UID = DefaultUID
	}
	if o.GID == 0 {
		o.GID = DefaultGID
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Build builds an image, or returns the existing one when nothing that goes
// into it has changed (hardened in place first if an older sandq made it;
// see Harden). A new build is hardened before its digest is taken: the
// setuid binaries and device nodes debootstrap makes never reach an image.
func Build(ctx context.Context, o BuildOptions) (*Image, error) {
	o.defaults()
	if err := checkName(o.Name); err != nil {
		return nil, err
	}
	for _, p := range o.Packages {
		if p == "" || strings.ContainsAny(p, ", \t\n") || strings.HasPrefix(p, "-") {
			return nil, fmt.Errorf("package %q: not a package name", p)
		}
	}
	if err := CheckPreload(o.Preload); err != nil {
		return nil, err
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
	var overlay []overlayEntry
	if o.Overlay != "" {
		if overlay, err = readOverlay(o.Overlay); err != nil {
			return nil, err
		}
	}
	stamp := buildStamp(o, cas, overlay)
	final := filepath.Join(o.Dir, o.Name)
	if !o.Force {
		if img, err := upToDate(o.Dir, o.Name, stamp, o.Logger); err != nil || img != nil {
			if err != nil || slices.Equal(img.Preload, o.Preload) {
				return img, err
			}
			cached, err := SetPreload(o.Dir, o.Name, o.Preload)
			if err != nil {
				return nil, err
			}
			cached.Cached = true
			return cached, nil
		}
	}
	if err := prepareDir(o.Dir, o.Logger); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(o.CacheDir, "debootstrap"), 0o755); err != nil {
		return nil, err
	}
	// 0700: debootstrap's tree has setuid binaries (su, passwd, mount)
	// until it is hardened.
	tmp := filepath.Join(o.Dir, ".build-"+o.Name+"-"+randomHex())
	if err := os.Mkdir(tmp, 0o700); err != nil {
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
	var rep *reporter
	if o.Progress != nil {
		rep = newReporter(o.Progress)
	}
	rep.begin(PhaseDebootstrap)
	cmd := exec.CommandContext(ctx, debootstrap, args...)
	cmd.Env = append(os.Environ(), reproducibleEnv...)
	setOutput(cmd, logFile, rep)
	err = runTool(cmd)
	logFile.Close()
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(rootfs, "debootstrap", "debootstrap.log")); rerr == nil {
			os.WriteFile(logPath, b, 0o644)
		}
		return nil, fmt.Errorf("debootstrap %s: %w\n%s(full log: %s)", o.Name, err, tailOf(logPath, 2000), logPath)
	}
	rep.end()
	if len(o.Packages) > 0 {
		rep.begin(PhasePackages)
		if err := aptInstall(ctx, rootfs, filepath.Join(o.CacheDir, "apt"), o.Packages, logPath, rep); err != nil {
			return nil, fmt.Errorf("image %s: %w\n%s(full log: %s)", o.Name, err, tailOf(logPath, 2000), logPath)
		}
		rep.end()
	}
	// The steps after the tools are Go code; each is a phase.
	steps := []struct {
		phase string
		run   func() error
	}{
		{PhaseOverlay, func() error { return applyOverlay(rootfs, overlay) }},
		{PhaseFinish, func() error {
			return finish(rootfs, finishOptions{UID: o.UID, GID: o.GID, CAs: cas, chrootUpdateCA: true})
		}},
		{PhaseNormalize, func() error { return normalize(rootfs) }},
		{PhaseHarden, func() error { _, err := harden(rootfs); return err }},
	}
	for _, s := range steps {
		if s.phase == PhaseOverlay && len(overlay) == 0 {
			continue
		}
		rep.begin(s.phase)
		if err := s.run(); err != nil {
			return nil, fmt.Errorf("image %s: %w", o.Name, err)
		}
		rep.end()
	}
	rep.begin(PhaseDigest)
	content, err := Digest(rootfs)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", o.Name, err)
	}
	rep.end()
	pkgs := append([]string{}, o.Packages...)
	sort.Strings(pkgs)
	img := &Image{
		Name: o.Name, Rootfs: filepath.Join(final, "rootfs"), Digest: content.Digest, Source: SourceBuild,
		Created: time.Now().UTC().Truncate(time.Second), Size: content.Size, Files: content.Files, Stamp: stamp, Packages: pkgs,
		Overlay: overlayPaths(overlay), Preload: slices.Clone(o.Preload), Hardening: hardeningVersion,
	}
	if err := os.WriteFile(filepath.Join(tmp, stampFile), []byte(stamp+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := writeMeta(tmp, img); err != nil {
		return nil, err
	}
	if err := swapIn(o.Dir, o.Name, tmp); err != nil {
		return nil, fmt.Errorf("image %s: %w", o.Name, err)
	}
	os.Remove(logPath)
	o.Logger.Info("built image", "image", o.Name, "digest", img.Digest, "size", img.Size)
	return img, nil
}

// upToDate returns the image if its stamp is stamp, or nil. An up-to-date
// image made by an older sandq is brought up to date in place (see
// Harden): hardened, its digest computed and recorded (with its source
// and stamp, when it had no metadata).
func upToDate(dir, name, stamp string, logger *slog.Logger) (*Image, error) {
	old, err := os.ReadFile(filepath.Join(dir, name, stampFile))
	if err != nil || strings.TrimSpace(string(old)) != stamp {
		return nil, nil
	}
	img, err := hardenImage(dir, name, logger, func(img *Image) {
		if img.Source == SourceUnknown {
			img.Source, img.Stamp = SourceBuild, stamp
		}
	})
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	img.Cached = true
	return img, nil
}

// sourceDateEpoch is the time the build's tools record where they would
// record the current time (SOURCE_DATE_EPOCH: shadow's password-change
// dates, Python's byte-code caches, which then are hash-checked); fixed so
// that rebuilds of the same packages have the same digest.
const sourceDateEpoch = "1704067200" // 2024-01-01T00:00:00Z

// reproducibleEnv is added to the environment of debootstrap and apt.
var reproducibleEnv = []string{"SOURCE_DATE_EPOCH=" + sourceDateEpoch, "PYTHONHASHSEED=0"}

// aptInstall installs packages inside rootfs with its own apt, the host's
// package cache directory bind-mounted as apt's archive cache so that
// rebuilds reuse downloads. Services are kept from starting.
func aptInstall(ctx context.Context, rootfs, cache string, pkgs []string, logPath string, rep *reporter) (err error) {
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
		cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"}, reproducibleEnv...)
		setOutput(cmd, logFile, rep)
		if err := runTool(cmd); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	if err := run("apt-get", "update", "-q"); err != nil {
		return err
	}
	return run(append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, pkgs...)...)
}

// setOutput sends a build tool's output to the build log and, when the
// build reports progress, through a packageCounter too. The counter reads
// from a pipe, so Wait waits a bounded time for it once the tool is gone:
// a daemon left holding the pipe does not hang the build.
func setOutput(cmd *exec.Cmd, logFile *os.File, rep *reporter) {
	if rep == nil {
		cmd.Stdout, cmd.Stderr = logFile, logFile
		return
	}
	w := io.MultiWriter(logFile, newPackageCounter(rep.count))
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 10 * time.Second
}

// runTool runs a build tool. A tool that succeeded while something it
// started still holds its output pipe (see setOutput) has succeeded, as it
// would have with its output sent straight to the log.
func runTool(cmd *exec.Cmd) error {
	if err := cmd.Run(); err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return err
	}
	return nil
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

// buildStamp hashes everything that goes into a build. An overlay adds
// lines only when it has entries, so the stamp of a build without one is
// what it was before overlays existed.
func buildStamp(o BuildOptions, cas map[string][]byte, overlay []overlayEntry) string {
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
	h.Write([]byte(overlayStamp(overlay)))
	return hex.EncodeToString(h.Sum(nil))
}

// ReadListFile reads a list of names (packages, modules), one or more a
// line; # starts a comment.
func ReadListFile(path string) ([]string, error) {
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
