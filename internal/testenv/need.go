// Package testenv is what sandq's tests need from the machine, in one
// place: the gates that decide whether a test may run here, the real
// services it runs against (Redis and MinIO as child processes on free
// loopback ports, in temporary directories), the sandq binary, child
// processes, and the network stand-ins the egress and firewall tests share
// (a DNS resolver, a host in a network namespace of its own, the probe a
// job runs to try to bypass its proxy).
//
// The gates follow the fast tier's rule. Under testing.Short() (`go test
// -short ./...`, `make check`: any user, under a minute) a test that needs
// root, runsc, network namespaces or the built images is SKIPPED, even on
// a machine that has them, and one that needs a program (redis-server,
// minio) runs if it is installed and is skipped if not. Without -short,
// whatever is missing FAILS the test, naming it and how to get it (`make
// deps`, `make images`, root). Nothing else ever skips; Long marks a test
// that is too slow for the fast tier.
//
// testenv imports no sandq package that has tests of its own which use it
// (only internal/devstack, internal/cleanup and executor/image), so every
// package's tests can. What needs the worker, the runner or the API
// server — the environment test/e2e and test/chaos share — is in its
// sub-package sandqtest.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sandq/sandq/executor/image"
)

// gate fails t when err says what is missing; under -short it skips t
// instead.
func gate(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if testing.Short() {
		t.Skipf("skipped under -short: %v", err)
	}
	t.Fatal(err)
}

// fullTier skips t under -short whatever this machine has, for tests of
// the full tier only (as root, they would change host-wide state and take
// long even in the fast tier); otherwise it gates t on err.
func fullTier(t testing.TB, what string, err error) {
	t.Helper()
	if testing.Short() {
		t.Skipf("skipped under -short: needs %s (`make test` runs it)", what)
	}
	gate(t, err)
}

// NeedRoot: the test runs as root (sandboxes, mounts, network namespaces,
// firewall rules, image import). Under -short it is skipped, even as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	fullTier(t, "root", CheckRoot())
}

// NeedBinary: every program named is on PATH. Under -short the test runs
// when they are and is skipped when not: a test needing only programs
// (redis-server, minio) that finishes quickly belongs to the fast tier.
func NeedBinary(t testing.TB, names ...string) {
	t.Helper()
	gate(t, CheckBinaries(names...))
}

// NeedRunsc: root and gVisor's runsc, for tests that start sandboxes.
// Under -short it is skipped.
func NeedRunsc(t testing.TB) {
	t.Helper()
	fullTier(t, "root and runsc", errors.Join(CheckRoot(), CheckBinaries("runsc")))
}

// NeedNetns: root, iproute2 and python3, for tests that make network
// namespaces, veth pairs and nftables rules (they change host-wide state).
// Under -short it is skipped.
func NeedNetns(t testing.TB) {
	t.Helper()
	fullTier(t, "root and network namespaces", errors.Join(CheckRoot(), CheckBinaries("ip", "python3")))
}

// NeedImage: the test image (TestImage) is built; it returns it. Under
// -short it is skipped.
func NeedImage(t testing.TB) Image {
	t.Helper()
	img := TestImage()
	fullTier(t, "the built images", img.Check())
	return img
}

// CheckRoot is NeedRoot's check, for TestMain (which has no *testing.T).
func CheckRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (sandboxes, mounts, network namespaces and firewall rules need it): run the tests with sudo, or `make check` for the fast tier")
	}
	return nil
}

// install says how to get each program the tests run.
var install = map[string]string{
	"runsc":          "gVisor; `make deps` builds it",
	"minio":          "`make deps` builds it",
	"mc":             "`make deps` builds it",
	"weed":           "SeaweedFS; `make deps` builds it from tools/seaweedfs",
	"redis-server":   "`make deps` installs Debian's redis-server",
	"redis-cli":      "`make deps` installs Debian's redis-server (with redis-tools)",
	"debootstrap":    "`make deps` installs it",
	"ip":             "`make deps` installs iproute2",
	"docker-compose": "`make deps` installs it (it only validates compose.yaml)",
	"chromium":       "`make deps` installs it (headless, for the dashboard test)",
	"helm":           "`make deps` builds it (only the chart's test in deploy/helm runs it)",
	"python3":        "apt-get install python3",
	"curl":           "apt-get install curl",
}

// CheckBinaries is NeedBinary's check, for TestMain.
func CheckBinaries(names ...string) error {
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			how := install[n]
			if how == "" {
				how = "install it"
			}
			missing = append(missing, fmt.Sprintf("%s (%s)", n, how))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not installed: %s", strings.Join(missing, ", "))
	}
	return nil
}

// Image is the image the tests run jobs on.
type Image struct {
	Dir, Name string
}

// TestImage is SANDQ_TEST_IMAGE (default "default") in SANDQ_IMAGE_DIR
// (default image.DefaultDir), as `make test` sets them.
func TestImage() Image {
	img := Image{Dir: os.Getenv("SANDQ_IMAGE_DIR"), Name: os.Getenv("SANDQ_TEST_IMAGE")}
	if img.Dir == "" {
		img.Dir = image.DefaultDir
	}
	if img.Name == "" {
		img.Name = "default"
	}
	return img
}

// Check is NeedImage's check, for TestMain.
func (i Image) Check() error {
	if _, err := image.Path(i.Dir, i.Name); err != nil {
		return fmt.Errorf("%w (`make images` builds the test images; SANDQ_IMAGE_DIR says where they are)", err)
	}
	return nil
}

// Long skips t under -short and does nothing otherwise: a test that takes
// long (it waits out timeouts, builds the sandq binary, runs many
// services) belongs to the full tier only. why says what makes it long.
func Long(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("skipped under -short: %s", why)
	}
}
