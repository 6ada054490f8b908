package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/testenv"
)

// runImage runs `sandq image ...` as main would, and returns its output.
func runImage(t *testing.T, args string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	app := &cli.App{Flags: globalFlags(), Commands: []*cli.Command{imageCommand()}, Writer: &out, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run(permuteArgs(app, strings.Fields("sandq image "+args)))
	return out.String(), err
}

// TestImageImportListRm imports a one-file image with the command, lists
// it, removes it, and checks a second removal is a clear error.
func TestImageImportListRm(t *testing.T) {
	testenv.NeedRoot(t) // image import
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "bin/true", Typeflag: tar.TypeReg, Mode: 0o755, Size: 4}} {
		tw.WriteHeader(h)
		if h.Size > 0 {
			io.WriteString(tw, "true")
		}
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "layout")
	l, err := layout.Write(archive, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Setenv("SANDQ_IMAGE_DIR", dir)

	out, err := runImage(t, "import "+archive+" tiny --max-size 1MiB")
	if err != nil || !strings.Contains(out, "image tiny imported") {
		t.Fatalf("import: %q %v", out, err)
	}
	if _, err := runImage(t, "import "+archive+" tiny --max-size lots"); err == nil || !strings.Contains(err.Error(), "--max-size") {
		t.Fatalf("import with a bad --max-size: %v", err)
	}
	for _, bad := range []string{"--max-size 2TiB", "--max-entries 0", "--max-entries 100000001"} {
		flag := strings.Fields(bad)[0]
		if _, err := runImage(t, "import "+archive+" other "+bad); err == nil || !strings.Contains(err.Error(), flag) || !strings.Contains(err.Error(), "at most") {
			t.Errorf("import with %s: %v; want a refusal naming %s and its maximum", bad, err, flag)
		}
	}
	// The caps' environment variables: a 1KiB cap refuses the layer.
	t.Setenv("SANDQ_IMPORT_MAX_SIZE", "1KiB")
	if _, err := runImage(t, "import "+archive+" other"); err == nil || !strings.Contains(err.Error(), "more than 1024 bytes (1KiB), the import's size cap") {
		t.Errorf("import under SANDQ_IMPORT_MAX_SIZE=1KiB: %v", err)
	}
	os.Unsetenv("SANDQ_IMPORT_MAX_SIZE")
	if out, err := runImage(t, "harden tiny"); err != nil || !strings.Contains(out, "image tiny hardened (digest sha256:") {
		t.Errorf("harden: %q %v", out, err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("image directory: %v %v; want 0700", st.Mode(), err)
	}
	out, err = runImage(t, "list")
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "tiny") || !strings.Contains(out, "import") {
		t.Fatalf("list: %q %v", out, err)
	}
	out, err = runImage(t, "list --json")
	var listed []image.Image
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 || listed[0].Name != "tiny" || !strings.HasPrefix(listed[0].Digest, "sha256:") || listed[0].Hardening != 1 {
		t.Fatalf("list --json: %q %v", out, err)
	}
	// The preload list: none, set, shown, refused, cleared.
	if out, err := runImage(t, "preload tiny"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("preload of an image without a list: %q %v", out, err)
	}
	t.Setenv("SANDQ_STATE_DIR", t.TempDir())
	if _, err := runImage(t, "snapshot tiny"); err == nil || !strings.Contains(err.Error(), `image "tiny" declares no preload list`) {
		t.Errorf("snapshot of an image without a list: %v", err)
	}
	if out, err := runImage(t, "preload tiny numpy matplotlib.pyplot"); err != nil || !strings.Contains(out, "image tiny preloads numpy matplotlib.pyplot") {
		t.Errorf("preload set: %q %v", out, err)
	}
	if out, err := runImage(t, "preload tiny"); err != nil || strings.TrimSpace(out) != "numpy matplotlib.pyplot" {
		t.Errorf("preload shown: %q %v", out, err)
	}
	for args, want := range map[string]string{
		"preload tiny numpy 2fast":   `"2fast" is not a Python module name`,
		"preload tiny --clear numpy": "--clear takes no modules",
		"preload":                    "takes a NAME",
		"preload missing numpy":      "image not found",
	} {
		if _, err := runImage(t, args); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", args, err, want)
		}
	}
	// The image has no python: its template is refused, and nothing is made.
	if _, err := runImage(t, "snapshot tiny"); err == nil || !strings.Contains(err.Error(), "snapshot template") {
		t.Errorf("snapshot of an image without python: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tiny", "templates")); !os.IsNotExist(err) {
		t.Errorf("a refused template left its directory: %v", err)
	}
	if out, err := runImage(t, "preload tiny --clear"); err != nil || !strings.Contains(out, "image tiny: no preload list") {
		t.Errorf("preload --clear: %q %v", out, err)
	}
	if out, err := runImage(t, "rm tiny"); err != nil || !strings.Contains(out, "image tiny removed") {
		t.Fatalf("rm: %q %v", out, err)
	}
	if _, err := runImage(t, "rm tiny"); err == nil || !strings.Contains(err.Error(), "image not found") {
		t.Fatalf("rm of a missing image: %v", err)
	}
	if out, err := runImage(t, "list --json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("list after rm: %q %v", out, err)
	}
}
