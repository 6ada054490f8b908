package image

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// CheckPreload refuses a preload list (the Python modules an image's
// snapshot template imports) holding a name that is not a Python module
// name, dotted or not, or holding one twice. An empty list is valid: the
// image has no template.
func CheckPreload(mods []string) error {
	seen := map[string]bool{}
	for _, m := range mods {
		if !moduleName(m) {
			return fmt.Errorf("preload module %q is not a Python module name (letters, digits and underscores, dotted)", m)
		}
		if seen[m] {
			return fmt.Errorf("preload module %q is listed twice", m)
		}
		seen[m] = true
	}
	return nil
}

func moduleName(s string) bool {
	for _, part := range strings.Split(s, ".") {
		if part == "" || part[0] >= '0' && part[0] <= '9' {
			return false
		}
		for _, r := range part {
			if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// SetPreload records mods as the preload list of image name under dir (none
// clears it), without touching its tree: the list says what the image's
// snapshot template imports, and a template is keyed by it, so workers make
// a new one when it changes.
func SetPreload(dir, name string, mods []string) (*Image, error) {
	if err := CheckPreload(mods); err != nil {
		return nil, err
	}
	img, err := Lookup(dir, name)
	if err != nil {
		return nil, err
	}
	if slices.Equal(img.Preload, mods) {
		return img, nil
	}
	img.Preload = slices.Clone(mods)
	if len(mods) == 0 {
		img.Preload = nil
	}
	if err := writeMeta(filepath.Join(dir, name), img); err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}
