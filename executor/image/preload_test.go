package image

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// A preload list holds dotted Python module names, each once: every other
// entry is refused with an error naming it.
func TestCheckPreload(t *testing.T) {
	for _, ok := range [][]string{nil, {"numpy"}, {"matplotlib", "matplotlib.pyplot", "_private", "a1.b_2"}} {
		if err := CheckPreload(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []struct {
		mods []string
		want string
	}{
		{[]string{""}, `""`},
		{[]string{"pandas; import os"}, `"pandas; import os"`},
		{[]string{"-m"}, `"-m"`},
		{[]string{"1numpy"}, `"1numpy"`},
		{[]string{"numpy."}, `"numpy."`},
		{[]string{"a..b"}, `"a..b"`},
		{[]string{"os/path"}, `"os/path"`},
		{[]string{"numpy", "pandas", "numpy"}, `"numpy" is listed twice`},
	} {
		err := CheckPreload(bad.mods)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v; want an error naming %s", bad.mods, err, bad.want)
		}
	}
}

// An image records the preload list it was imported with; SetPreload
// changes and clears it without touching the tree (same digest), refuses a
// bad list and a missing image, and an import refuses a bad list before
// making anything.
func TestImagePreloadList(t *testing.T) {
	needRoot(t, "image import")
	imageDir := t.TempDir()
	layout := writeLayout(t, imageOf(t, base(t)))
	o := importOpts(t, imageDir, layout, "img")
	o.Preload = []string{"numpy", "pandas"}
	img, err := Import(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Lookup(imageDir, "img"); err != nil || !slices.Equal(got.Preload, []string{"numpy", "pandas"}) {
		t.Fatalf("imported with a preload list: %+v %v", got, err)
	}
	set, err := SetPreload(imageDir, "img", []string{"scipy"})
	if err != nil || !slices.Equal(set.Preload, []string{"scipy"}) || set.Digest != img.Digest {
		t.Fatalf("SetPreload: %+v %v", set, err)
	}
	if got, _ := Lookup(imageDir, "img"); !slices.Equal(got.Preload, []string{"scipy"}) || got.Digest != img.Digest || got.Source != SourceImport {
		t.Fatalf("after SetPreload the image reads %+v", got)
	}
	if _, err := SetPreload(imageDir, "img", []string{"scipy", "bad name"}); err == nil || !strings.Contains(err.Error(), `"bad name"`) {
		t.Fatalf("a bad list: %v", err)
	}
	if got, _ := Lookup(imageDir, "img"); !slices.Equal(got.Preload, []string{"scipy"}) {
		t.Fatalf("a refused list changed the image: %+v", got.Preload)
	}
	if _, err := SetPreload(imageDir, "missing", []string{"numpy"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a missing image: %v; want ErrNotFound", err)
	}
	if cleared, err := SetPreload(imageDir, "img", nil); err != nil || cleared.Preload != nil {
		t.Fatalf("clearing: %+v %v", cleared, err)
	}
	if got, _ := Lookup(imageDir, "img"); got.Preload != nil {
		t.Fatalf("a cleared list reads %q", got.Preload)
	}
	bad := importOpts(t, t.TempDir(), layout, "other")
	bad.Preload = []string{"os.system('x')"}
	if _, err := Import(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "not a Python module name") {
		t.Fatalf("import with a bad preload list: %v", err)
	}
	mustBeEmpty(t, bad.Dir)
}
