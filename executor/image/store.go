package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Files beside an image's rootfs.
const (
	metaFile   = "image.json"
	digestFile = "digest"
	stampFile  = "stamp"
)

// Sources of an image.
const (
	SourceBuild  = "build"
	SourceImport = "import"
	// SourceUnknown is an image without metadata (made before sandq
	// recorded digests); rebuilding it records them.
	SourceUnknown = "unknown"
)

// ErrNotFound is returned for an image name with no image.
var ErrNotFound = errors.New("image not found")

// Image is an image on disk.
type Image struct {
	Name string `json:"name"`
	// Rootfs is the root filesystem directory (not stored: it is where the
	// image is found).
	Rootfs string `json:"rootfs,omitempty"`
	// Digest is the content digest of the finished root filesystem (see
	// Digest); empty for an image without metadata.
	Digest string `json:"digest"`
	// Source is SourceBuild or SourceImport.
	Source string `json:"source"`
	// Created is when the image was built or imported.
	Created time.Time `json:"created"`
	// Size is the bytes of its regular files, Files its entries.
	Size  int64 `json:"size"`
	Files int64 `json:"files"`
	// Stamp is the build's input hash (builds only).
	Stamp string `json:"stamp,omitempty"`
	// Packages are the packages asked for (builds only).
	Packages []string `json:"packages,omitempty"`
	// Overlay lists the files a build's overlay put in the image (builds
	// only).
	Overlay []string `json:"overlay,omitempty"`
	// ConfigDigest and ManifestDigest identify the OCI image it was
	// imported from (imports only).
	ConfigDigest   string `json:"config_digest,omitempty"`
	ManifestDigest string `json:"manifest_digest,omitempty"`
	// Skipped counts archive entries an import left out (device nodes,
	// FIFOs).
	Skipped int `json:"skipped,omitempty"`
	// Preload are the Python modules the image's snapshot template imports
	// before it is checkpointed (see executor.TemplateSpec), in order;
	// none: the image has no template, its jobs start cold.
	Preload []string `json:"preload,omitempty"`
	// Hardening is the version of the host-safety pass the image's tree
	// has had (no setuid/setgid or world-write bits, file capabilities or
	// special files; see Harden); 0 for an image made before it existed.
	Hardening int `json:"hardening,omitempty"`
	// Cached is set when Build found the image up to date.
	Cached bool `json:"-"`
}

// checkName refuses names that are not a plain directory name.
func checkName(name string) error {
	if name == "" || filepath.Base(name) != name || strings.HasPrefix(name, ".") || strings.ContainsAny(name, " \t\n/\\") {
		return fmt.Errorf("image name %q: must be a plain name (no slashes, spaces or leading dot)", name)
	}
	return nil
}

// writeMeta records img's digest and metadata in dir (an image directory,
// usually still a temporary one).
func writeMeta(dir string, img *Image) error {
	m := *img
	m.Rootfs, m.Cached = "", false
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, metaFile), append(b, '\n')); err != nil {
		return fmt.Errorf("image metadata: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, digestFile), []byte(img.Digest+"\n")); err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp-" + randomHex()
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Path is the root filesystem of image name under dir, checked to exist.
func Path(dir, name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	p := filepath.Join(dir, name, "rootfs")
	if st, err := os.Stat(filepath.Join(p, "bin")); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%w: %q in %s; build it with `sandq image build %s --packages-file FILE` or import one with `sandq image import ARCHIVE %s`", ErrNotFound, name, dir, name, name)
	}
	return p, nil
}

// Resolve finds image name under dir: its root filesystem and recorded
// digest. An image without a recorded digest is an error; rebuilding or
// re-importing it records one.
func Resolve(dir, name string) (*Image, error) {
	img, err := Lookup(dir, name)
	if err != nil {
		return nil, err
	}
	if img.Digest == "" {
		return nil, fmt.Errorf("image %q in %s has no recorded digest (made before sandq recorded them); rebuild it with `sandq image build` or re-import it", name, dir)
	}
	return img, nil
}

// Lookup reads an image's metadata; an image without any (made before
// sandq recorded them) has Source SourceUnknown and no digest.
func Lookup(dir, name string) (*Image, error) {
	rootfs, err := Path(dir, name)
	if err != nil {
		return nil, err
	}
	img, err := readMeta(filepath.Join(dir, name), name)
	if err != nil {
		return nil, err
	}
	img.Rootfs = rootfs
	return img, nil
}

// readMeta reads the metadata of image name in its directory imageDir; an
// image without any has Source SourceUnknown and no digest.
func readMeta(imageDir, name string) (*Image, error) {
	img := &Image{Name: name, Source: SourceUnknown}
	b, err := os.ReadFile(filepath.Join(imageDir, metaFile))
	if errors.Is(err, os.ErrNotExist) {
		if st, err := os.Stat(filepath.Join(imageDir, "rootfs")); err == nil {
			img.Created = st.ModTime().UTC()
		}
		return img, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	if err := json.Unmarshal(b, img); err != nil {
		return nil, fmt.Errorf("image %q: %s: %w", name, metaFile, err)
	}
	img.Name = name
	return img, nil
}

// List lists the images under dir, by name. Images without metadata are
// listed with Source SourceUnknown.
func List(dir string) ([]*Image, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image directory: %w", err)
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || checkName(e.Name()) != nil {
			continue
		}
		img, err := Lookup(dir, e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // not an image (no rootfs/bin)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes image name from dir. The name is freed at once (the tree
// is renamed aside, then deleted); sandboxes still running on the image
// lose their files.
func Remove(dir, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	final := filepath.Join(dir, name)
	if _, err := os.Lstat(final); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %q in %s", ErrNotFound, name, dir)
	}
	aside := filepath.Join(dir, ".rm-"+name+"-"+randomHex())
	if err := os.Rename(final, aside); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	if err := os.RemoveAll(aside); err != nil {
		return fmt.Errorf("remove image %q: %w", name, err)
	}
	return nil
}

// swapIn moves the finished image directory tmp to dir/name. An image
// already there is renamed aside (sandboxes running on it hold its
// directory open, not its name), kept for a day, longer than any job may
// run, and removed by a later build or import.
func swapIn(dir, name, tmp string) error {
	final := filepath.Join(dir, name)
	old := filepath.Join(dir, ".old-"+name+"-"+randomHex())
	if err := os.Rename(final, old); err == nil {
		now := time.Now()
		os.Chtimes(old, now, now) // marks when it was replaced
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	removeOldTrees(dir, 24*time.Hour)
	return nil
}

// removeOldTrees deletes replaced images older than age, and what a killed
// import or removal left. (A killed build's .build-* directory is left
// alone: it may still have the package cache bind-mounted inside.)
func removeOldTrees(dir string, age time.Duration) {
	var olds []string
	for _, g := range []string{".old-*", ".import-*", ".rm-*"} {
		m, _ := filepath.Glob(filepath.Join(dir, g))
		olds = append(olds, m...)
	}
	for _, o := range olds {
		if st, err := os.Stat(o); err == nil && time.Since(st.ModTime()) > age {
			os.RemoveAll(o)
		}
	}
}
