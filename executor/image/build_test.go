package image

import (
	"context"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// builds; building again is skipped and keeps it. The first build's
// progress reports its phases in order and debootstrap's and apt's package
// counts (less is not in the base, so apt has a package to install).
func TestBuildDigestRecordedAndStable(t *testing.T) {
	needRoot(t, "image builds")
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatalf("debootstrap is not installed (scripts/install-deps.sh installs it): %v", err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	opts := func(name string) BuildOptions {
		return BuildOptions{Name: name, Dir: dir, Packages: []string{"bash", "less"}, Logger: testLogger(t)}
	}
	var imgs []*Image
	var events []Event
	for _, name := range []string{"first", "second"} {
		start := time.Now()
		o := opts(name)
		if name == "first" {
			o.Progress = func(e Event) { events = append(events, e) }
		}
		img, err := Build(ctx, o)
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
	checkBuildEvents(t, events)
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

	// Safe to keep on the host: debootstrap's setuid binaries (su,
	// passwd, mount) are not, its device nodes are gone, /tmp is 1777,
	// the directories are 0700.
	checkHostSafe(t, first.Rootfs)
	wantPerm(t, filepath.Join(first.Rootfs, "usr/bin/su"), 0o755)
	wantPerm(t, filepath.Join(first.Rootfs, "tmp"), 0o777|fs.ModeSticky)
	wantPerm(t, dir, 0o700)
	wantPerm(t, filepath.Join(dir, "first"), 0o700)
	if ents, err := os.ReadDir(filepath.Join(first.Rootfs, "dev")); err == nil {
		for _, e := range ents {
			if !e.IsDir() && e.Type()&fs.ModeSymlink == 0 {
				t.Errorf("/dev/%s (%v) is left in the image", e.Name(), e.Type())
			}
		}
	}
	if meta.Hardening != hardeningVersion {
		t.Errorf("image.json records hardening %d, want %d", meta.Hardening, hardeningVersion)
	}

	// Nothing changed: skipped, same digest, no phases reported.
	events = nil
	o := opts("first")
	o.Progress = func(e Event) { events = append(events, e) }
	again, err := Build(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 0 {
		t.Errorf("a build skipped as up to date reported %+v", events)
	}
	if !again.Cached || again.Digest != first.Digest {
		t.Fatalf("rebuild without changes: cached %v digest %s, want cached %s", again.Cached, again.Digest, first.Digest)
	}

	// Built by an older sandq (setuid su, no hardening recorded, 0755):
	// building again, with nothing changed, hardens it in place instead
	// of rebuilding, to the digest a fresh build has.
	su := filepath.Join(second.Rootfs, "usr/bin/su")
	if err := os.Chmod(su, 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "second", "image.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "hardening")
	b, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "second", "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "second"), 0o755)
	os.Chmod(dir, 0o755)
	fixed, err := Build(ctx, opts("second"))
	if err != nil {
		t.Fatal(err)
	}
	if !fixed.Cached || fixed.Digest != first.Digest || fixed.Hardening != hardeningVersion {
		t.Fatalf("an old image, up to date: cached %v digest %s hardening %d; want cached, %s, %d", fixed.Cached, fixed.Digest, fixed.Hardening, first.Digest, hardeningVersion)
	}
	wantPerm(t, su, 0o755)
	wantPerm(t, dir, 0o700)
	wantPerm(t, filepath.Join(dir, "second"), 0o700)
	list, err := List(dir)
	if err != nil || len(list) != 2 || list[0].Name != "first" || list[1].Name != "second" || list[1].Digest != first.Digest {
		t.Fatalf("List: %v, %v", list, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*")); len(leftovers) != 0 {
		t.Errorf("left in the image directory: %v", leftovers)
	}
}

// checkBuildEvents checks a build's progress (one with packages, no
// overlay): each phase started then done, in the build's order, and
// debootstrap's and apt's package counts reported inside their phases,
// ending with every package configured.
func checkBuildEvents(t *testing.T, events []Event) {
	t.Helper()
	var phases []string
	counts := map[string]map[string]Event{} // phase, step: the last count
	open := ""
	for _, e := range events {
		switch e.Kind {
		case PhaseStarted:
			if open != "" {
				t.Errorf("%s started while %s was not done", e.Phase, open)
			}
			open = e.Phase
			phases = append(phases, e.Phase)
		case PhaseDone:
			if e.Phase != open || e.Elapsed <= 0 {
				t.Errorf("%s done (after %s) while %q was the phase", e.Phase, e.Elapsed, open)
			}
			open = ""
		case PackageCount:
			if e.Phase != open || (e.Phase != PhaseDebootstrap && e.Phase != PhasePackages) {
				t.Errorf("package count %+v in phase %q", e, open)
			}
			if counts[e.Phase] == nil {
				counts[e.Phase] = map[string]Event{}
			}
			counts[e.Phase][e.Step] = e
		}
	}
	want := []string{PhaseDebootstrap, PhasePackages, PhaseFinish, PhaseNormalize, PhaseHarden, PhaseDigest}
	if !slices.Equal(phases, want) || open != "" {
		t.Errorf("phases %v (open: %q), want %v", phases, open, want)
	}
	for _, phase := range []string{PhaseDebootstrap, PhasePackages} {
		t.Logf("%s: last counts %+v", phase, counts[phase])
		c := counts[phase][StepConfigured]
		if c.Done == 0 || c.Done != c.Total {
			t.Errorf("%s: last configured count %d/%d, want all of a known total", phase, c.Done, c.Total)
		}
	}
	if f := counts[PhaseDebootstrap][StepFetched]; f.Done != counts[PhaseDebootstrap][StepConfigured].Total {
		t.Errorf("debootstrap fetched %d packages, configured %d", f.Done, counts[PhaseDebootstrap][StepConfigured].Total)
	}
}
