package image

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// countsOf feeds out to a packageCounter in writes of n bytes, which split
// lines, and returns the counts it reported as "step done/total".
func countsOf(out string, n int) []string {
	var got []string
	pc := newPackageCounter(func(step string, done, total int) {
		got = append(got, fmt.Sprintf("%s %d/%d", step, done, total))
	})
	for len(out) > 0 {
		k := min(n, len(out))
		pc.Write([]byte(out[:k]))
		out = out[k:]
	}
	return got
}

// debootstrapOutput has the shapes of what debootstrap prints (its info
// lines, as in /usr/share/debootstrap/functions and scripts/debian-common):
// a package downloaded is retrieved then validated, one in the cache is
// only validated, index files have no version, and the stage lines
// ("Unpacking required packages...") are not packages.
const debootstrapOutput = `I: Target architecture can be executed
I: Retrieving InRelease 
I: Checking Release signature
I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)
I: Retrieving Packages 
I: Validating Packages 
I: Resolving dependencies of required packages...
I: Resolving dependencies of base packages...
I: Checking component main on http://mirror.invalid/debian...
I: Retrieving adduser 3.134
I: Validating adduser 3.134
I: Validating apt 2.6.1
I: Retrieving libc6 2.36-9+deb12u10
I: Validating libc6 2.36-9+deb12u10
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting adduser...
I: Extracting libc6...
I: Installing required packages...
I: Unpacking required packages...
I: Unpacking libc6:amd64...
I: Unpacking adduser...
I: Configuring required packages...
I: Configuring libc6:amd64...
I: Configuring adduser...
I: Configuring libc6:amd64...
I: Unpacking the base system...
I: Unpacking apt...
I: Configuring the base system...
I: Configuring apt...
I: Base system installed successfully.
`

// aptUpdate and aptInstallOutput are apt-get update -q and apt-get install -q, as the build runs
// them (the summary line as apt-get prints it on this host; Get lines as
// apt's fetcher prints them; the dpkg lines as in /var/log/apt/term.log).
const aptUpdate = `Hit:1 http://mirror.invalid/debian bookworm InRelease
Get:2 http://mirror.invalid/debian bookworm-updates InRelease [55.4 kB]
Fetched 55.4 kB in 0s (240 kB/s)
Reading package lists...
`

const aptInstallOutput = `Reading package lists...
Building dependency tree...
Reading state information...
The following additional packages will be installed:
  libtext-charwidth-perl
The following NEW packages will be installed:
  cowsay libtext-charwidth-perl
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
NEED
After this operation, 98.3 kB of additional disk space will be used.
GETS
debconf: delaying package configuration, since apt-utils is not installed
Fetched 28.9 kB in 0s (110 kB/s)
Selecting previously unselected package libtext-charwidth-perl:amd64.
(Reading database ... 6089 files and directories currently installed.)
Preparing to unpack .../libtext-charwidth-perl_0.04-11_amd64.deb ...
Unpacking libtext-charwidth-perl:amd64 (0.04-11) ...
Selecting previously unselected package cowsay.
Preparing to unpack .../cowsay_3.03+dfsg2-8_all.deb ...
Unpacking cowsay (3.03+dfsg2-8) ...
Setting up libtext-charwidth-perl:amd64 (0.04-11) ...
Setting up cowsay (3.03+dfsg2-8) ...
`

func TestPackageCounterDebootstrap(t *testing.T) {
	want := []string{
		"fetched 1/0", "fetched 2/0", "fetched 3/0",
		"unpacked 1/3", "unpacked 2/3", "configured 1/3", "configured 2/3",
		"unpacked 3/3", "configured 3/3",
	}
	for _, n := range []int{1, 7, 4096} {
		if got := countsOf(debootstrapOutput, n); !slices.Equal(got, want) {
			t.Errorf("writes of %d bytes: counts\n%s\nwant\n%s", n, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestPackageCounterApt(t *testing.T) {
	gets := "Get:1 http://mirror.invalid/debian bookworm/main amd64 libtext-charwidth-perl amd64 0.04-11 [9,792 B]\n" +
		"Get:2 http://mirror.invalid/debian bookworm/main amd64 cowsay all 3.03+dfsg2-8 [19.1 kB]"
	cases := []struct {
		name, need, gets string
		want             []string
	}{
		// Nothing in the cache: every package is a Get, so the fetch count
		// has the total.
		{"all downloaded", "Need to get 28.9 kB of archives.", gets,
			[]string{"fetched 1/2", "fetched 2/2", "unpacked 1/2", "unpacked 2/2", "configured 1/2", "configured 2/2"}},
		// One in the cache: apt does not say how many it fetches.
		{"some cached", "Need to get 19.1 kB/28.9 kB of archives.", gets[strings.Index(gets, "\n")+1:],
			[]string{"fetched 1/0", "unpacked 1/2", "unpacked 2/2", "configured 1/2", "configured 2/2"}},
		{"all cached", "Need to get 0 B/28.9 kB of archives.", "",
			[]string{"unpacked 1/2", "unpacked 2/2", "configured 1/2", "configured 2/2"}},
	}
	for _, c := range cases {
		if c.gets != "" {
			c.gets += "\n"
		}
		out := strings.NewReplacer("NEED", c.need, "GETS\n", c.gets).Replace(aptInstallOutput)
		for _, n := range []int{3, 4096} {
			// The update's index Get comes before the summary: not a package.
			if got := countsOf(aptUpdate+out, n); !slices.Equal(got, c.want) {
				t.Errorf("%s, writes of %d bytes: counts\n%s\nwant\n%s", c.name, n, strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		}
	}
}

// TestPackageCounterLongLine: output with no newline for a long time is
// dropped, not kept; the lines after it are still counted.
func TestPackageCounterLongLine(t *testing.T) {
	var got []string
	pc := newPackageCounter(func(step string, done, total int) { got = append(got, fmt.Sprintf("%s %d/%d", step, done, total)) })
	pc.Write([]byte(strings.Repeat("x", 100<<10)))
	if len(pc.buf) != 0 {
		t.Fatalf("kept %d bytes of an unended line", len(pc.buf))
	}
	pc.Write([]byte("\nI: Retrieving adduser 3.134\n"))
	if !slices.Equal(got, []string{"fetched 1/0"}) {
		t.Errorf("counts after a long line: %v", got)
	}
}

// TestPackageCounterRealBuild reads the log of a real build (debootstrap
// with its cache warm, then apt-get update and apt-get install of bash,
// already in the base, and less; the mirror's name replaced): each tool's
// last counts are all its packages through every step.
func TestPackageCounterRealBuild(t *testing.T) {
	b, err := os.ReadFile("testdata/build.log")
	if err != nil {
		t.Fatal(err)
	}
	debootstrap, apt, ok := strings.Cut(string(b), "I: Base system installed successfully.\n")
	if !ok {
		t.Fatal("testdata/build.log has no end of debootstrap")
	}
	last := func(out string) map[string]string {
		m := map[string]string{}
		pc := newPackageCounter(func(step string, done, total int) { m[step] = fmt.Sprintf("%d/%d", done, total) })
		pc.Write([]byte(out))
		return m
	}
	// 91 packages, all from the cache: validated, not retrieved. libc-bin
	// is configured three times, ca-certificates twice.
	if got, want := last(debootstrap), map[string]string{StepFetched: "91/0", StepUnpacked: "91/91", StepConfigured: "91/91"}; !maps.Equal(got, want) {
		t.Errorf("debootstrap's last counts %v, want %v", got, want)
	}
	if got, want := last(apt), map[string]string{StepFetched: "1/1", StepUnpacked: "1/1", StepConfigured: "1/1"}; !maps.Equal(got, want) {
		t.Errorf("apt's last counts %v, want %v", got, want)
	}
}

// TestRunToolOutputHeldOpen: with progress, a tool's output goes through a
// pipe; a tool that succeeded while a process it started still holds the
// pipe succeeds once WaitDelay has passed (not hanging, not failing), and
// what it printed is counted. A tool that fails still fails.
func TestRunToolOutputHeldOpen(t *testing.T) {
	log, err := os.Create(t.TempDir() + "/build.log")
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	var events []Event
	rep := newReporter(func(e Event) { events = append(events, e) })
	rep.begin(PhaseDebootstrap)
	cmd := exec.Command("sh", "-c", "sleep 3 & echo 'I: Retrieving adduser 3.134'")
	setOutput(cmd, log, rep)
	cmd.WaitDelay = 200 * time.Millisecond
	if err := runTool(cmd); err != nil {
		t.Fatalf("a tool that succeeded, its pipe held open: %v", err)
	}
	if len(events) != 2 || events[1].Kind != PackageCount || events[1].Done != 1 {
		t.Errorf("events %+v, want the start and one package fetched", events)
	}
	cmd = exec.Command("sh", "-c", "exit 3")
	setOutput(cmd, log, rep)
	if err := runTool(cmd); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("a tool that failed: %v", err)
	}
}
