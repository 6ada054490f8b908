package image

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testLogger logs to the test at debug level.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// manifestDiff lists the manifest lines only in a and only in b.
func manifestDiff(t *testing.T, a, b string) (onlyA, onlyB []string) {
	t.Helper()
	la, _, err := manifest(a)
	if err != nil {
		t.Fatal(err)
	}
	lb, _, err := manifest(b)
	if err != nil {
		t.Fatal(err)
	}
	inB := map[string]bool{}
	for _, l := range lb {
		inB[l] = true
	}
	inA := map[string]bool{}
	for _, l := range la {
		inA[l] = true
		if !inB[l] {
			onlyA = append(onlyA, strings.TrimSpace(l))
		}
	}
	for _, l := range lb {
		if !inA[l] {
			onlyB = append(onlyB, strings.TrimSpace(l))
		}
	}
	return onlyA, onlyB
}

// TestBuildDigestRecordedAndStable builds the same small image twice, for
// real, with debootstrap and the host's Debian mirror: the digest is
// recorded beside each, is the digest of the tree, and is the same for both
// builds; building again is skipped and keeps it.
func TestBuildDigestRecordedAndStable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("image builds must run as root")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatalf("debootstrap is not installed (scripts/install-deps.sh installs it): %v", err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	opts := func(name string) BuildOptions {
		return BuildOptions{Name: name, Dir: dir, Packages: []string{"bash"}, Logger: testLogger(t)}
	}
	var imgs []*Image
	for _, name := range []string{"first", "second"} {
		start := time.Now()
		img, err := Build(ctx, opts(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("built %s in %s: %s (%d files, %d bytes)", name, time.Since(start).Round(time.Second), img.Digest, img.Files, img.Size)
		if img.Cached || !strings.HasPrefix(img.Digest, "sha256:") || len(img.Digest) != 71 {
			t.Fatalf("build %s: %+v", name, img)
		}
		imgs = append(imgs, img)
	}
	first, second := imgs[0], imgs[1]
	if first.Digest != second.Digest {
		onlyA, onlyB := manifestDiff(t, first.Rootfs, second.Rootfs)
		t.Fatalf("two builds of the same packages differ:\nonly in the first:\n  %s\nonly in the second:\n  %s",
			strings.Join(onlyA, "\n  "), strings.Join(onlyB, "\n  "))
	}

	// Recorded beside the image, and the digest of what is there.
	b, err := os.ReadFile(filepath.Join(dir, "first", "digest"))
	if err != nil || strings.TrimSpace(string(b)) != first.Digest {
		t.Fatalf("digest file: %q, %v; want %s", b, err, first.Digest)
	}
	var meta Image
	b, err = os.ReadFile(filepath.Join(dir, "first", "image.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Name != "first" || meta.Digest != first.Digest || meta.Source != SourceBuild || meta.Size <= 0 || meta.Created.IsZero() || meta.Stamp == "" {
		t.Fatalf("image.json: %s", b)
	}
	c, err := Digest(first.Rootfs)
	if err != nil || c.Digest != first.Digest {
		t.Fatalf("digest of the tree: %s, %v; recorded %s", c.Digest, err, first.Digest)
	}
	got, err := Resolve(dir, "first")
	if err != nil || got.Digest != first.Digest || got.Rootfs != first.Rootfs {
		t.Fatalf("Resolve: %+v, %v", got, err)
	}

	// What the runner needs is there.
	for _, p := range []string{"bin/bash", "tmp/.sandq", "mnt/inputs", "mnt/outputs", "work", "etc/ssl/certs/ca-certificates.crt"} {
		if _, err := os.Stat(filepath.Join(first.Rootfs, p)); err != nil {
			t.Errorf("image lacks /%s: %v", p, err)
		}
	}
	if passwd, _ := os.ReadFile(filepath.Join(first.Rootfs, "etc/passwd")); !strings.Contains(string(passwd), "sandbox:x:1000:1000:") {
		t.Errorf("no job user in /etc/passwd:\n%s", passwd)
	}
	for _, p := range []string{"var/log/dpkg.log", "var/cache/ldconfig/aux-cache", "var/cache/apt/pkgcache.bin"} {
		if _, err := os.Lstat(filepath.Join(first.Rootfs, p)); err == nil {
			t.Errorf("/%s is left in the image", p)
		}
	}

	// Nothing changed: skipped, same digest.
	again, err := Build(ctx, opts("first"))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Digest != first.Digest {
		t.Fatalf("rebuild without changes: cached %v digest %s, want cached %s", again.Cached, again.Digest, first.Digest)
	}
	list, err := List(dir)
	if err != nil || len(list) != 2 || list[0].Name != "first" || list[1].Name != "second" || list[1].Digest != first.Digest {
		t.Fatalf("List: %v, %v", list, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*")); len(leftovers) != 0 {
		t.Errorf("left in the image directory: %v", leftovers)
	}
}
