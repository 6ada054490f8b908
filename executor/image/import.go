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
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Import caps.
const (
	// DefaultMaxImportBytes caps the regular-file bytes an import writes,
	// over all layers.
	DefaultMaxImportBytes = 8 << 30
	// DefaultMaxImportEntries caps the archive entries an import reads,
	// over all layers.
	DefaultMaxImportEntries = 1_000_000
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
	// MaxBytes caps the bytes of regular files written over all layers.
	// Default DefaultMaxImportBytes.
	MaxBytes int64
	// MaxEntries caps the archive entries over all layers. Default
	// DefaultMaxImportEntries.
	MaxEntries int64
	// Force replaces an existing image of the same name.
	Force  bool
	Logger *slog.Logger
}

func (o *ImportOptions) defaults() {
	if o.Dir == "" {
		o.Dir = "/var/lib/sandq/images"
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

// Import flattens the image in an OCI image layout or `docker save`
// archive into a new image: its layers are applied in order to an empty
// tree (whiteouts honoured, nothing written outside the tree or through a
// symbolic link, device nodes and FIFOs left out, within the size and
// entry caps), which is then finished like a built image (extra CAs, job
// user, mount points, /tmp/.sandq) and recorded with its digest. It works
// in a temporary directory beside the image and leaves nothing behind when
// it fails. An existing image of the same name is an error unless Force.
func Import(ctx context.Context, o ImportOptions) (*Image, error) {
	o.defaults()
	if err := checkName(o.Name); err != nil {
		return nil, err
	}
	if o.MaxBytes < 0 || o.MaxEntries < 0 {
		return nil, fmt.Errorf("import caps must be positive: max bytes %d, max entries %d", o.MaxBytes, o.MaxEntries)
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
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	tmp := filepath.Join(o.Dir, ".import-"+o.Name+"-"+randomHex())
	if err := os.Mkdir(tmp, 0o755); err != nil {
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
	scratch := filepath.Join(tmp, "archive")
	src, err := openArchive(o.Archive, scratch)
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
	x, err := newExtractor(rootfs, o.MaxBytes, o.MaxEntries, o.Logger)
	if err != nil {
		return nil, err
	}
	defer x.close()
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		err = x.applyLayer(ctx, i+1, rc)
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
	content, err := Digest(rootfs)
	if err != nil {
		return nil, err
	}
	img := &Image{
		Name: o.Name, Digest: content.Digest, Source: SourceImport, Created: time.Now().UTC().Truncate(time.Second),
		Size: content.Size, Files: content.Files, ConfigDigest: configDigest.String(), ManifestDigest: manifestDigest.String(),
		Skipped: x.skipped,
	}
	if err := writeMeta(tmp, img); err != nil {
		return nil, err
	}
	return img, nil
}

// openArchive opens the one image in an OCI image layout directory, a tar
// of one (unpacked into scratch) or a `docker save` tarball; tars may be
// gzipped.
func openArchive(archive, scratch string) (v1.Image, error) {
	st, err := os.Stat(archive)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return imageFromLayout(archive)
	}
	names, err := archiveNames(archive)
	if err != nil {
		return nil, err
	}
	switch {
	case names["oci-layout"] && names["index.json"]:
		if err := unpackLayout(archive, scratch); err != nil {
			return nil, err
		}
		return imageFromLayout(scratch)
	case names["manifest.json"]:
		img, err := tarball.Image(func() (io.ReadCloser, error) { return openMaybeGzip(archive) }, nil)
		if err != nil {
			return nil, fmt.Errorf("docker save archive: %w", err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("%s is neither an OCI image layout (no oci-layout and index.json) nor a `docker save` archive (no manifest.json)", archive)
}

// openMaybeGzip opens a file, decompressing it if it is gzipped.
func openMaybeGzip(p string) (io.ReadCloser, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return struct {
			io.Reader
			io.Closer
		}{br, f}, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, f}, nil
}

// archiveNames lists the cleaned entry names of a tar.
func archiveNames(p string) (map[string]bool, error) {
	rc, err := openMaybeGzip(p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	names := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: not a readable tar archive: %w", p, err)
		}
		names[path.Clean(hdr.Name)] = true
	}
}

var blobName = regexp.MustCompile(`^blobs/[a-z0-9]+/[a-f0-9]+$`)

// unpackLayout writes the files of an OCI image layout (oci-layout,
// index.json, blobs/ALG/HEX) from a tar into dir; nothing else in the tar
// is written.
func unpackLayout(archive, dir string) error {
	rc, err := openMaybeGzip(archive)
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", archive, err)
		}
		name := path.Clean(hdr.Name)
		if hdr.Typeflag != tar.TypeReg || !(name == "oci-layout" || name == "index.json" || blobName.MatchString(name)) {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %s: %w", archive, name, err)
		}
	}
}

// imageFromLayout picks the image of an OCI image layout: the only one,
// or the only one for linux on this machine's architecture.
func imageFromLayout(dir string) (v1.Image, error) {
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
	img, err := pick[0].idx.Image(pick[0].desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	return img, nil
}
