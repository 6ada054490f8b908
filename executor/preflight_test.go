package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sandq/sandq/internal/testenv"
)

// A test binary started with privilegeChildEnv set is a worker start under
// reduced privileges (see TestStartRefusedWithoutPrivileges): it tries
// NewRunscRunner, prints the outcome and exits.
const privilegeChildEnv = "SANDQ_TEST_PRIVILEGE_CHILD_STATE"

func init() {
	state := os.Getenv(privilegeChildEnv)
	if state == "" {
		return
	}
	r, err := NewRunscRunner(context.Background(), RunscConfig{StateDir: state})
	if err != nil {
		fmt.Println("refused:", err)
		os.Exit(0)
	}
	r.Close(context.Background())
	fmt.Println("started")
	os.Exit(0)
}

func TestParseRunscVersion(t *testing.T) {
	day := func(s string) time.Time {
		d, err := time.Parse("2006-01-02 15:04:05", s)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ok := []struct {
		in   string
		want time.Time
	}{
		{"v0.0.0-20260905035102-160fafc42237", day("2026-09-05 03:51:02")},
		{"v0.0.0-20250601000000-0123456789ab", day("2025-06-01 00:00:00")},
		{"v1.2.4-0.20250102030405-abcdefabcdef", day("2025-01-02 03:04:05")},
		{"v1.3.0-rc.1.0.20240102030405-abcdefabcdef+incompatible", day("2024-01-02 03:04:05")},
		{"release-20240513.0", day("2024-05-13 00:00:00")},
		{"release-20221102.1", day("2022-11-02 00:00:00")},
		{"release-20230605", day("2023-06-05 00:00:00")},
	}
	for _, c := range ok {
		got, found := parseRunscVersion(c.in)
		if !found || !got.Equal(c.want) {
			t.Errorf("parseRunscVersion(%q) = %s, %v; want %s", c.in, got, found, c.want)
		}
	}
	for _, in := range []string{"VERSION_MISSING", "(devel)", "", "v1.2.3", "release-2024", "v0.0.0-2026090503510-160fafc42237", "0.0.0-20260905035102-XYZ"} {
		if got, found := parseRunscVersion(in); found {
			t.Errorf("parseRunscVersion(%q) = %s, want no date", in, got)
		}
	}
}

// TestInstalledAndPinnedRunscPass: the runsc on this host, and the version
// scripts/install-deps.sh pins, satisfy MinRunscDate.
func TestInstalledAndPinnedRunscPass(t *testing.T) {
	testenv.NeedRunsc(t)
	oldest, err := time.Parse(time.DateOnly, MinRunscDate)
	if err != nil {
		t.Fatalf("MinRunscDate %q: %v", MinRunscDate, err)
	}
	v, err := CheckRunsc(context.Background(), "runsc", "systrap")
	if err != nil {
		t.Fatalf("the installed runsc is refused (make test installs it): %v", err)
	}
	if v.Date.Before(oldest) || v.Version == "" || !filepath.IsAbs(v.Path) {
		t.Errorf("installed runsc %+v", v)
	}
	script, err := os.ReadFile("../scripts/install-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUNSC_VERSION=(\S+)$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("no RUNSC_VERSION= in scripts/install-deps.sh")
	}
	pinned, ok := parseRunscVersion(string(m[1]))
	if !ok || pinned.Before(oldest) {
		t.Errorf("install-deps.sh pins runsc %s (dated %s), older than MinRunscDate %s", m[1], pinned, MinRunscDate)
	}
}

// fakeRunsc writes an executable script standing in for runsc.
func fakeRunsc(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "runsc")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStartRefusedWithUnusableRunsc starts runners whose runsc is missing,
// broken, too old, of unknown age, or lacking the flags sandq uses. Each is
// refused with ErrRunsc and a message naming the problem, before anything
// is made in the state directory.
func TestStartRefusedWithUnusableRunsc(t *testing.T) {
	testenv.NeedRoot(t)
	cases := []struct {
		name, runsc string
		want        []string
	}{
		{"missing", "/nonexistent/sandq-test/runsc", []string{"runsc not found (/nonexistent/sandq-test/runsc)", "scripts/install-deps.sh"}},
		{"not on PATH", "sandq-test-no-such-runsc", []string{"runsc not found (sandq-test-no-such-runsc)"}},
		{"broken", fakeRunsc(t, `echo "cannot execute: exec format error" >&2; exit 126`), []string{"--version", "exec format error"}},
		{"too old release", fakeRunsc(t, `echo "runsc version release-20220101.0"; echo "spec: 1.0.2"`),
			[]string{"too old", "release-20220101.0", "2022-01-01", "sandq needs gVisor of " + MinRunscDate + " or later", "scripts/install-deps.sh"}},
		{"too old pseudo-version", fakeRunsc(t, `echo "runsc version v0.0.0-20230101000000-0123456789ab"`), []string{"too old", "2023-01-01"}},
		{"age unknown", fakeRunsc(t, `echo "runsc version VERSION_MISSING"; echo "spec: 1.2.1"`), []string{"cannot tell the age", "VERSION_MISSING"}},
		{"lacks the flags", fakeRunsc(t, `case "$1" in --version) echo "runsc version release-20990101.0";; *) echo "flag provided but not defined: -overlay2" >&2; exit 2;; esac`),
			[]string{"refuses the flags", "-overlay2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			r, err := NewRunscRunner(context.Background(), RunscConfig{Runsc: c.runsc, StateDir: state})
			if err == nil {
				r.Close(context.Background())
				t.Fatal("the runner started")
			}
			t.Logf("refused: %v", err)
			if !errors.Is(err, ErrRunsc) {
				t.Errorf("error %v is not ErrRunsc", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state dir made before the refusal: %v", err)
			}
		})
	}
}

func TestCheckPrivileges(t *testing.T) {
	testenv.NeedRoot(t)
	if err := CheckPrivileges("/sandq"); err != nil {
		t.Fatalf("this host (tests run as root) is refused: %v", err)
	}
	real, err := readPrivileges("/sandq")
	if err != nil {
		t.Fatal(err)
	}
	// A memory cgroup mount the worker cannot write to: a read-only tmpfs.
	ro := t.TempDir()
	if err := unix.Mount("sandq-test", ro, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	cases := []struct {
		name   string
		modify func(*privileges)
		want   []string
	}{
		{"not root", func(p *privileges) { p.euid = 1000 }, []string{"uid 1000", "must run as root"}},
		{"no CAP_SYS_ADMIN", func(p *privileges) { p.capEff &^= 1 << unix.CAP_SYS_ADMIN }, []string{"lacks CAP_SYS_ADMIN", "privileged"}},
		{"no CAP_NET_ADMIN", func(p *privileges) { p.capEff &^= 1 << unix.CAP_NET_ADMIN }, []string{"lacks CAP_NET_ADMIN"}},
		{"no capabilities", func(p *privileges) { p.capEff = 0 }, []string{"lacks CAP_SYS_ADMIN and CAP_NET_ADMIN"}},
		{"no memory controller", func(p *privileges) { p.memCgroup = "" }, []string{"no memory cgroup controller"}},
		{"read-only memory cgroup", func(p *privileges) { p.memCgroup = ro }, []string{"memory cgroup at " + ro + "/sandq is not writable", "read-only file system"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := real
			c.modify(&p)
			err := checkPrivileges(p)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("refused: %v", err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// The probe cgroup is gone again.
	left, _ := filepath.Glob(filepath.Join(real.memCgroup, "sandq", ".sandq-check-*"))
	if len(left) > 0 {
		t.Errorf("probe cgroups left: %v", left)
	}
}

// TestStartRefusedWithoutPrivileges starts a runner in a child process (this
// test binary) that lacks CAP_SYS_ADMIN, and one that is not root, both
// through setpriv.
func TestStartRefusedWithoutPrivileges(t *testing.T) {
	testenv.NeedRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	// A copy of the test binary that an unprivileged user may run.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(dir, "executor.test")
	copyFile(t, os.Args[0], self, 0o755)
	state := filepath.Join(dir, "state")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"without CAP_SYS_ADMIN", []string{"--bounding-set", "-sys_admin"}, "lacks CAP_SYS_ADMIN"},
		{"without CAP_NET_ADMIN", []string{"--bounding-set", "-net_admin"}, "lacks CAP_NET_ADMIN"},
		{"not root", []string{"--reuid", "65534", "--regid", "65534", "--clear-groups"}, "must run as root"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(setpriv, append(c.args, self, "-test.run=^$")...)
			cmd.Env = append(os.Environ(), privilegeChildEnv+"="+state)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v: %s", err, out)
			}
			t.Logf("%s", out)
			if !strings.Contains(string(out), "refused:") || !strings.Contains(string(out), c.want) {
				t.Errorf("child said %q, want a refusal naming %q", out, c.want)
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state dir made before the refusal: %v", err)
			}
		})
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
