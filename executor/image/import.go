package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sandq/sandq/internal/bytesize"
)

// ErrExists is returned when importing over an existing image without
// Force.
var ErrExists = errors.New("image already exists")

// ImportOptions describe an import.
type ImportOptions struct {
	// Name of the new image, a plain name.
	Name string
	// Archive is an OCI image layout (a directory, or a tar of one,
	// optionally gzipped) or a `docker save` tarball.
	Archive string
	// Dir is the image directory. Default /var/lib/sandq/images.
	Dir string
	// CADir holds the host's extra CA certificates (*.crt), trusted inside
	// the image. Default /usr/local/share/ca-certificates.
	CADir string
	// UID and GID of the job user, added as "sandbox" unless the image
	// has them. Default 1000.
	UID, GID int
	// MaxBytes caps the bytes the import unpacks, counted as they are
	// decompressed or read, whatever becomes of them (written, skipped,
	// a whiteout's body): the archive's decompressed stream when it is a
	// gzipped tar, and, separately, the layers' uncompressed streams
	// together. Default DefaultMaxImportBytes, at most
	// MaxImportBytesLimit.
	MaxBytes int64
	// MaxEntries caps the tar entries of the archive and all its layers
	// together. Default DefaultMaxImportEntries, at most
	// MaxImportEntriesLimit.
	MaxEntries int64
	// Preload is the image's preload list (see Image.Preload).
	Preload []string
	// Force replaces an existing image of the same name.
	Force  bool
	Logger *slog.Logger
}

func (o *ImportOptions) defaults() {
	if o.Dir == "" {
		o.Dir = DefaultDir
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
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxImportBytes
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxImportEntries
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *ImportOptions) validate() error {
	if o.MaxBytes < 0 || o.MaxBytes > MaxImportBytesLimit {
		return fmt.Errorf("import size cap (--max-size, MaxBytes) %d: must be positive and at most %d (%s)", o.MaxBytes, MaxImportBytesLimit, bytesize.Format(MaxImportBytesLimit))
	}
	if err := CheckPreload(o.Preload); err != nil {
		return err
	}
	if o.MaxEntries < 0 || o.MaxEntries > MaxImportEntriesLimit {
		return fmt.Errorf("import entry cap (--max-entries, MaxEntries) %d: must be positive and at most %d", o.MaxEntries, MaxImportEntriesLimit)
	}
	return nil
}

// Import flattens the image in an OCI image layout or `docker save`
// archive into a new image: its layers are applied in order to an empty
// tree (whiteouts honoured, nothing written outside the tree or through a
// symbolic link, device nodes and FIFOs left out, within the size and
// entry caps), which is then finished like a built image (extra CAs, job
// user, mount points, /tmp/.sandq), made safe to keep on the host (no
// setuid/setgid or world-write bits; see Harden) and recorded with its
// digest. It works in a temporary 0700 directory beside the image and
// leaves nothing behind when it fails. An existing image of the same name
// is an error unless Force.
func Import(ctx context.Context, o ImportOptions) (*Image, error) {
	o.defaults()
	if err := checkName(o.Name); err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("image import must run as root: it sets the owners of the image's files")
	}
	final := filepath.Join(o.Dir, o.Name)
	if _, err := os.Lstat(final); err == nil && !o.Force {
		return nil, fmt.Errorf("%w: %q in %s; remove it with `sandq image rm %s` or pass --force", ErrExists, o.Name, o.Dir, o.Name)
	}
	cas, err := hostCAs(o.CADir)
	if err != nil {
		return nil, err
	}
	if err := prepareDir(o.Dir, o.Logger); err != nil {
		return nil, err
	}
	tmp := filepath.Join(o.Dir, ".import-"+o.Name+"-"+randomHex())
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	img, err := importInto(ctx, tmp, o, cas)
	if err != nil {
		return nil, fmt.Errorf("import %s as %q: %w", o.Archive, o.Name, err)
	}
	if err := swapIn(o.Dir, o.Name, tmp); err != nil {
		return nil, fmt.Errorf("import %q: %w", o.Name, err)
	}
	img.Rootfs = filepath.Join(final, "rootfs")
	o.Logger.Info("imported image", "image", o.Name, "digest", img.Digest, "config_digest", img.ConfigDigest, "size", img.Size)
	return img, nil
}

// importInto makes the image directory tmp.
func importInto(ctx context.Context, tmp string, o ImportOptions, cas map[string][]byte) (*Image, error) {
	b := newBudget(ctx, o.MaxBytes, o.MaxEntries)
	scratch := filepath.Join(tmp, "archive")
	src, err := openArchive(o.Archive, scratch, b)
	if err != nil {
		return nil, err
	}
	configDigest, err := src.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	manifestDigest, err := src.Digest()
	if err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	layers, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	x, err := newExtractor(rootfs, b, o.Logger)
	if err != nil {
		return nil, err
	}
	defer x.close()
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		err = x.applyLayer(ctx, i+1, b.layerReader(rc))
		rc.Close()
		if err != nil {
			return nil, err
		}
	}
	if x.skipped > 0 {
		o.Logger.Warn("import left out special files (device nodes, FIFOs)", "image", o.Name, "count", x.skipped)
	}
	if err := os.RemoveAll(scratch); err != nil {
		return nil, err
	}
	if err := finish(rootfs, finishOptions{UID: o.UID, GID: o.GID, CAs: cas}); err != nil {
		return nil, fmt.Errorf("finishing: %w", err)
	}
	if _, err := harden(rootfs); err != nil {
		return nil, err
	}
	content, err := Digest(rootfs)
	if err != nil {
		return nil, err
	}
	img := &Image{
		Name: o.Name, Digest: content.Digest, Source: SourceImport, Created: time.Now().UTC().Truncate(time.Second),
		Size: content.Size, Files: content.Files, ConfigDigest: configDigest.String(), ManifestDigest: manifestDigest.String(),
		Skipped: x.skipped, Preload: slices.Clone(o.Preload), Hardening: hardeningVersion,
	}
	if err := writeMeta(tmp, img); err != nil {
		return nil, err
	}
	return img, nil
}

// openArchive opens the one image in an OCI image layout directory, a tar
// of one (unpacked into scratch) or a `docker save` tarball. A gzipped tar
// is decompressed once, into scratch, counted against b's size cap; the
// tar's entries are counted against its entry cap.
func openArchive(archive, scratch string, b *budget) (v1.Image, error) {
	st, err := os.Stat(archive)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return imageFromLayout(archive)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is neither a directory nor a regular file", archive)
	}
	if err := os.Mkdir(scratch, 0o700); err != nil {
		return nil, err
	}
	plain := archive
	gz, err := isGzip(archive)
	if err != nil {
		return nil, err
	}
	if gz {
		plain = filepath.Join(scratch, "archive.tar")
		if err := gunzipTo(archive, plain, b); err != nil {
			return nil, err
		}
	}
	names, err := archiveNames(plain, b)
	if err != nil {
		return nil, err
	}
	switch {
	case names["oci-layout"] && names["index.json"]:
		dir := filepath.Join(scratch, "layout")
		if err := unpackLayout(plain, dir); err != nil {
			return nil, fmt.Errorf("OCI image layout: %w", err)
		}
		if gz {
			if err := os.Remove(plain); err != nil { // the blobs are out: no longer needed
				return nil, err
			}
		}
		return imageFromLayout(dir)
	case names["manifest.json"]:
		img, err := tarball.Image(func() (io.ReadCloser, error) { return os.Open(plain) }, nil)
		if err != nil {
			return nil, fmt.Errorf("docker save archive: %w", err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("%s is neither an OCI image layout (no oci-layout and index.json) nor a `docker save` archive (no manifest.json)", archive)
}

// isGzip reports whether file p starts with gzip's magic number.
func isGzip(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	magic := make([]byte, 2)
	n, err := io.ReadFull(f, magic)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	return n == 2 && bytes.Equal(magic, []byte{0x1f, 0x8b}), nil
}

// gunzipTo decompresses the gzipped file src into a new file dst, within
// b's size cap.
func gunzipTo(src, dst string, b *budget) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, b.archiveReader(zr))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	return nil
}

// metaNames are the archive entries read whole into memory (by sandq or
// the container library): the layout's and `docker save`'s JSON files.
func isMetaName(name string) bool {
	return name == "oci-layout" || name == "index.json" || strings.HasSuffix(name, ".json")
}

// archiveNames lists the cleaned entry names of a plain tar, counting its
// entries against b's cap and refusing a JSON document over maxMetaBytes.
func archiveNames(p string, b *budget) (map[string]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return nil, fmt.Errorf("not a readable tar archive: %w", err)
		}
		if err := b.entry(); err != nil {
			return nil, err
		}
		name := path.Clean(hdr.Name)
		if isMetaName(name) && hdr.Size > maxMetaBytes {
			return nil, fmt.Errorf("%w: %s is %d bytes, over the %s an image's JSON document may have", ErrTooLarge, name, hdr.Size, bytesize.Format(maxMetaBytes))
		}
		if !strings.Contains(name, "/") { // the names that tell the format apart are at the top
			names[name] = true
		}
	}
}

var blobName = regexp.MustCompile(`^blobs/[a-z0-9]+/[a-f0-9]+$`)

// unpackLayout writes the files of an OCI image layout (oci-layout,
// index.json, blobs/ALG/HEX) from a plain tar into dir; nothing else in the
// tar is written. What it writes is no larger than the tar: a sparse
// entry, which the tar reader would expand, is refused.
func unpackLayout(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(bufio.NewReader(f))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(hdr.Name)
		if !(name == "oci-layout" || name == "index.json" || blobName.MatchString(name)) {
			continue
		}
		if isSparse(hdr) {
			return fmt.Errorf("%w: entry %q is a sparse file; an image layout has none", ErrUnsafeEntry, hdr.Name)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

// checkLayoutFiles refuses an OCI image layout directory whose oci-layout,
// index.json or blobs are anything but regular files (a symbolic link or
// device could read the host's files into the image, or never end), or
// whose index.json is over maxMetaBytes.
func checkLayoutFiles(dir string) error {
	for _, n := range []string{"oci-layout", "index.json"} {
		st, err := os.Lstat(filepath.Join(dir, n))
		if err != nil {
			return fmt.Errorf("OCI image layout: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: OCI image layout %s: %s is not a regular file (%s)", ErrUnsafeEntry, dir, n, st.Mode().Type())
		}
		if st.Size() > maxMetaBytes {
			return fmt.Errorf("%w: OCI image layout %s: %s is %d bytes, over the %s an image's JSON document may have", ErrTooLarge, dir, n, st.Size(), bytesize.Format(maxMetaBytes))
		}
	}
	blobs := filepath.Join(dir, "blobs")
	err := filepath.WalkDir(blobs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("%w: OCI image layout %s: %s is not a regular file (%s); a layout's blobs must be", ErrUnsafeEntry, dir, rel, d.Type())
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// checkMetaBlob refuses a blob read whole into memory (an index, a
// manifest, a config) that is over maxMetaBytes.
func checkMetaBlob(dir string, h v1.Hash, what string) error {
	st, err := os.Lstat(filepath.Join(dir, "blobs", h.Algorithm, h.Hex))
	if err != nil {
		return fmt.Errorf("OCI image layout: %s %s: %w", what, h, err)
	}
	if st.Size() > maxMetaBytes {
		return fmt.Errorf("%w: OCI image layout: %s %s is %d bytes, over the %s an image's JSON document may have", ErrTooLarge, what, h, st.Size(), bytesize.Format(maxMetaBytes))
	}
	return nil
}

// imageFromLayout picks the image of an OCI image layout: the only one,
// or the only one for linux on this machine's architecture.
func imageFromLayout(dir string) (v1.Image, error) {
	if err := checkLayoutFiles(dir); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	type candidate struct {
		idx  v1.ImageIndex
		desc v1.Descriptor
	}
	var all []candidate
	var walk func(idx v1.ImageIndex, depth int) error
	walk = func(idx v1.ImageIndex, depth int) error {
		if depth > 4 {
			return errors.New("OCI image layout: indexes nested too deep")
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return fmt.Errorf("OCI image layout: %w", err)
		}
		for _, d := range m.Manifests {
			switch {
			case d.MediaType.IsIndex():
				if err := checkMetaBlob(dir, d.Digest, "index"); err != nil {
					return err
				}
				child, err := idx.ImageIndex(d.Digest)
				if err != nil {
					return fmt.Errorf("OCI image layout: %w", err)
				}
				if err := walk(child, depth+1); err != nil {
					return err
				}
			case d.MediaType.IsImage():
				if d.Platform != nil && d.Platform.OS == "unknown" {
					continue // build attestations, not images
				}
				all = append(all, candidate{idx, d})
			}
		}
		return nil
	}
	if err := walk(idx, 0); err != nil {
		return nil, err
	}
	pick := all
	if len(pick) > 1 {
		pick = nil
		for _, c := range all {
			if c.desc.Platform != nil && c.desc.Platform.OS == "linux" && c.desc.Platform.Architecture == runtime.GOARCH {
				pick = append(pick, c)
			}
		}
	}
	if len(pick) != 1 {
		var what []string
		for _, c := range all {
			p := "no platform"
			if c.desc.Platform != nil {
				p = c.desc.Platform.String()
			}
			what = append(what, c.desc.Digest.String()+" ("+p+")")
		}
		return nil, fmt.Errorf("OCI image layout holds %d images and not exactly one for linux/%s: %s", len(all), runtime.GOARCH, strings.Join(what, ", "))
	}
	if err := checkMetaBlob(dir, pick[0].desc.Digest, "manifest"); err != nil {
		return nil, err
	}
	img, err := pick[0].idx.Image(pick[0].desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	if err := checkMetaBlob(dir, m.Config.Digest, "config"); err != nil {
		return nil, err
	}
	return img, nil
}
