package image

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The phases of a build, in the order they run. Packages runs only when
// the build has packages beyond debootstrap's base, overlay only when it
// has an overlay directory.
const (
	// PhaseDebootstrap makes the minimal base system.
	PhaseDebootstrap = "debootstrap"
	// PhasePackages installs the packages with apt inside the base.
	PhasePackages = "packages"
	// PhaseOverlay copies the overlay's files in.
	PhaseOverlay = "overlay"
	// PhaseFinish trusts the host's CAs and adds the job user and the
	// mount points.
	PhaseFinish = "finish"
	// PhaseNormalize removes what differs between builds (logs, caches).
	PhaseNormalize = "normalize"
	// PhaseHarden removes what is unsafe to keep on the host.
	PhaseHarden = "harden"
	// PhaseDigest hashes the tree.
	PhaseDigest = "digest"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// PhaseStarted: a phase began.
	PhaseStarted EventKind = iota
	// PhaseDone: a phase ended well; Elapsed is how long it took.
	PhaseDone
	// PackageCount: debootstrap or apt got further through the packages.
	PackageCount
)

// Package steps counted by PackageCount events.
const (
	// StepFetched counts packages downloaded, or by debootstrap found in
	// its cache and validated.
	StepFetched = "fetched"
	// StepUnpacked counts packages unpacked by dpkg.
	StepUnpacked = "unpacked"
	// StepConfigured counts packages configured (apt's "Setting up").
	StepConfigured = "configured"
)

// Event is a build's progress, reported to BuildOptions.Progress.
type Event struct {
	Kind  EventKind
	Phase string
	// Elapsed is the time since the phase began: zero when it starts.
	Elapsed time.Duration
	// Step, Done and Total are a PackageCount's: Done packages of Total
	// went through Step. Total is 0 when the tool does not say (packages
	// taken from the download cache are not listed by apt, so the fetch
	// count has no total when some were cached).
	Step        string
	Done, Total int
}

// reporter sends a build's events, one at a time, to the caller's func.
type reporter struct {
	mu    sync.Mutex
	fn    func(Event)
	phase string
	start time.Time
}

func newReporter(fn func(Event)) *reporter { return &reporter{fn: fn} }

func (r *reporter) send(e Event) {
	if r == nil || r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fn(e)
}

// begin starts a phase.
func (r *reporter) begin(phase string) {
	if r == nil {
		return
	}
	r.phase, r.start = phase, time.Now()
	r.send(Event{Kind: PhaseStarted, Phase: phase})
}

// end ends the current phase.
func (r *reporter) end() {
	if r == nil {
		return
	}
	r.send(Event{Kind: PhaseDone, Phase: r.phase, Elapsed: time.Since(r.start)})
}

// count reports a package count of the current phase.
func (r *reporter) count(step string, done, total int) {
	if r == nil {
		return
	}
	r.send(Event{Kind: PackageCount, Phase: r.phase, Elapsed: time.Since(r.start), Step: step, Done: done, Total: total})
}

// packageCounter reads what debootstrap and apt-get print, line by line,
// and counts the packages through each step. It is an io.Writer, given
// the tools' output beside the build log.
type packageCounter struct {
	report func(step string, done, total int)
	buf    []byte

	// debootstrap: packages fetched (by name: a download is retrieved,
	// then validated), unpacked and configured (by name too: a package
	// whose triggers run is configured again, libc-bin three times).
	// Every package fetched is installed, so the fetch count is the total
	// of the later steps.
	fetched, debUnpacked, debConfigd map[string]bool

	// apt-get install: the packages it will install (its summary line),
	// whether it downloads all of them (no part of them in the cache),
	// downloads seen, unpacked, set up.
	aptTotal, aptGets, aptUnpacked, aptSetUp int
	aptSummary, aptFetchAll                  bool
}

func newPackageCounter(report func(step string, done, total int)) *packageCounter {
	return &packageCounter{report: report, fetched: map[string]bool{}, debUnpacked: map[string]bool{}, debConfigd: map[string]bool{}}
}

func (p *packageCounter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.line(strings.TrimRight(string(p.buf[:i]), "\r"))
		p.buf = p.buf[i+1:]
	}
	// A line that never ends is not a line the counter knows; it is
	// dropped rather than kept growing.
	if len(p.buf) > 64<<10 {
		p.buf = p.buf[:0]
	}
	return len(b), nil
}

var (
	// "0 upgraded, 143 newly installed, 0 to remove and 0 not upgraded."
	aptSummaryLine = regexp.MustCompile(`^(\d+) upgraded, (\d+) newly installed`)
	// "Get:12 http://mirror/debian bookworm/main amd64 libc6 amd64 2.36-9 [2,757 kB]"
	aptGetLine = regexp.MustCompile(`^Get:\d+ `)
)

func (p *packageCounter) line(l string) {
	switch {
	// debootstrap: "I: Retrieving libc6 2.36-9+deb12u4", "I: Validating
	// libc6 2.36-9+deb12u4" (the index files, "I: Retrieving Packages ",
	// have no version), "I: Unpacking libc6:amd64...", "I: Configuring
	// libc6:amd64...". Extracting is a first, quicker unpacking of the
	// required packages and is not counted.
	case strings.HasPrefix(l, "I: Retrieving ") || strings.HasPrefix(l, "I: Validating "):
		if f := strings.Fields(l); len(f) == 4 {
			p.debCount(StepFetched, p.fetched, f[2])
		}
	// A package's name has no space; "I: Unpacking required packages..."
	// and "I: Configuring the base system..." are debootstrap's stages.
	case strings.HasPrefix(l, "I: Unpacking ") && strings.HasSuffix(l, "...") && len(strings.Fields(l)) == 3:
		p.debCount(StepUnpacked, p.debUnpacked, strings.Fields(l)[2])
	case strings.HasPrefix(l, "I: Configuring ") && strings.HasSuffix(l, "...") && len(strings.Fields(l)) == 3:
		p.debCount(StepConfigured, p.debConfigd, strings.Fields(l)[2])

	// apt-get install.
	case aptSummaryLine.MatchString(l):
		m := aptSummaryLine.FindStringSubmatch(l)
		up, _ := strconv.Atoi(m[1])
		added, _ := strconv.Atoi(m[2])
		p.aptTotal, p.aptSummary = up+added, true
	case strings.HasPrefix(l, "Need to get ") && p.aptSummary:
		// "Need to get 45.3 MB of archives." downloads all; "Need to get
		// 3,072 kB/45.3 MB of archives." has the rest in the cache.
		p.aptFetchAll = !strings.Contains(l, "/")
	case aptGetLine.MatchString(l) && p.aptSummary:
		// apt-get update's index downloads come before the summary and
		// are not packages.
		p.aptGets++
		total := 0
		if p.aptFetchAll {
			total = p.aptTotal
		}
		p.report(StepFetched, p.aptGets, total)
	case strings.HasPrefix(l, "Unpacking ") && p.aptSummary:
		p.aptUnpacked++
		p.report(StepUnpacked, p.aptUnpacked, p.aptTotal)
	case strings.HasPrefix(l, "Setting up ") && p.aptSummary:
		p.aptSetUp++
		p.report(StepConfigured, p.aptSetUp, p.aptTotal)
	}
}

// debCount adds a package to one of debootstrap's steps and reports the
// step's count if it is new. Fetching has no total; the later steps have
// the fetch count, or none if they go past it (then it was not the total
// after all).
func (p *packageCounter) debCount(step string, seen map[string]bool, name string) {
	if seen[name] {
		return
	}
	seen[name] = true
	total := 0
	if step != StepFetched && len(seen) <= len(p.fetched) {
		total = len(p.fetched)
	}
	p.report(step, len(seen), total)
}
