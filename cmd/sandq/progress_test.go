package main

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)} }
func sec(s float64) time.Duration        { return time.Duration(s * float64(time.Second)) }
func count(phase, step string, done, total int, elapsed float64) image.Event {
	return image.Event{Kind: image.PackageCount, Phase: phase, Step: step, Done: done, Total: total, Elapsed: sec(elapsed)}
}

// playBuild plays a build's events to p, moving the clock as a build
// would, with a log line and status redraws between them.
func playBuild(p *buildProgress, clock *fakeClock) {
	p.event(image.Event{Kind: image.PhaseStarted, Phase: image.PhaseDebootstrap})
	clock.add(sec(5))
	p.event(count(image.PhaseDebootstrap, image.StepFetched, 1, 0, 5))
	clock.add(sec(1))
	p.tick()
	p.event(count(image.PhaseDebootstrap, image.StepFetched, 2, 0, 6)) // within plainEvery of the start: not a plain line
	clock.add(sec(14))
	p.event(count(image.PhaseDebootstrap, image.StepUnpacked, 1, 2, 20)) // 20s after the last plain line
	p.logWriter().Write([]byte("level=WARN msg=slow\n"))
	clock.add(sec(2))
	p.event(count(image.PhaseDebootstrap, image.StepConfigured, 2, 2, 22))
	p.event(image.Event{Kind: image.PhaseDone, Phase: image.PhaseDebootstrap, Elapsed: sec(22.25)})
	clock.add(sec(3))
	p.tick() // the phase is done: its time stays
	p.event(image.Event{Kind: image.PhaseStarted, Phase: image.PhaseDigest})
	clock.add(sec(1.5))
	p.event(image.Event{Kind: image.PhaseDone, Phase: image.PhaseDigest, Elapsed: sec(1.5)})
	p.close()
	p.tick() // after close: nothing
	p.event(image.Event{Kind: image.PhaseStarted, Phase: image.PhaseHarden})
}

func TestBuildProgressTerminal(t *testing.T) {
	var out bytes.Buffer
	clock := newFakeClock()
	playBuild(newBuildProgress(&out, true, clock.now), clock)
	want := []string{
		"\rdebootstrap 0s\033[K",
		"\rdebootstrap 5s, packages: 1 fetched\033[K",
		"\rdebootstrap 6s, packages: 1 fetched\033[K",
		"\rdebootstrap 6s, packages: 2 fetched\033[K",
		"\rdebootstrap 20s, packages: 1/2 unpacked\033[K",
		"\r\033[Klevel=WARN msg=slow\n",
		"\rdebootstrap 20s, packages: 1/2 unpacked\033[K",
		"\rdebootstrap 22s, packages: 2/2 configured\033[K",
		"\rdebootstrap 22s, packages: 2/2 configured\033[K",
		"\rdebootstrap 22s, packages: 2/2 configured\033[K",
		"\rdigest 0s\033[K",
		"\rdigest 1s\033[K",
		"\r\033[K",
	}
	if got := out.String(); got != strings.Join(want, "") {
		t.Errorf("terminal output\n%q\nwant\n%q", got, strings.Join(want, ""))
	}
}

func TestBuildProgressPlain(t *testing.T) {
	var out bytes.Buffer
	clock := newFakeClock()
	playBuild(newBuildProgress(&out, false, clock.now), clock)
	want := "debootstrap started\n" +
		"debootstrap 20s, packages: 1/2 unpacked\n" +
		"level=WARN msg=slow\n" +
		"debootstrap done in 22.2s, packages: 2/2 configured\n" +
		"digest started\n" +
		"digest done in 1.5s\n"
	if got := out.String(); got != want {
		t.Errorf("plain output\n%s\nwant\n%s", got, want)
	}
	if strings.ContainsAny(out.String(), "\r\033") {
		t.Errorf("plain output has terminal controls: %q", out.String())
	}
}

// memFile is a jobs.File of n bytes held in memory.
func memFile(name string, n int) jobs.File {
	return jobs.File{Name: name, Size: int64(n), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(make([]byte, n))), nil
	}}
}

// TestCountingReader: every byte read through the wrapped files, from
// several goroutines as uploads run, is counted once; the files' sizes
// make the total.
func TestCountingReader(t *testing.T) {
	u := newUploadProgress(io.Discard, true, time.Now)
	files := []jobs.File{u.wrap(memFile("script.py", 1000)), u.wrap(memFile("a.csv", 3<<20)), u.wrap(memFile("b.csv", 5<<20+7))}
	if want := int64(1000 + 3<<20 + 5<<20 + 7); u.total != want {
		t.Fatalf("total %d, want %d", u.total, want)
	}
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := f.Open()
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			buf := make([]byte, 1000) // short reads, as a multipart copy makes
			for {
				if _, err := r.Read(buf); err != nil {
					if err != io.EOF {
						t.Error(err)
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := u.sent.Load(); got != u.total {
		t.Errorf("counted %d bytes, read %d", got, u.total)
	}
	// A file that cannot be opened says so, through the wrapper.
	bad := u.wrap(jobs.File{Name: "gone", Open: func() (io.ReadCloser, error) { return nil, io.ErrUnexpectedEOF }})
	if _, err := bad.Open(); err != io.ErrUnexpectedEOF {
		t.Errorf("open of a failing file: %v", err)
	}
}

// readN reads n bytes from a wrapped file.
func readN(t *testing.T, f jobs.File, n int) io.ReadCloser {
	t.Helper()
	r, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestUploadProgressTerminal(t *testing.T) {
	var out bytes.Buffer
	clock := newFakeClock()
	u := newUploadProgress(&out, true, clock.now)
	f := u.wrap(memFile("big.bin", 100<<20))
	clock.add(sec(0.25))
	r := readN(t, f, 1<<20)
	u.tick() // too early: a quick upload shows nothing
	clock.add(sec(0.75))
	u.tick()
	io.ReadFull(r, make([]byte, 49<<20))
	clock.add(sec(4))
	u.tick()
	u.close(true)
	u.tick()
	want := "\ruploading 1.0MiB of 100.0MiB (1%), 1.0MiB/s\033[K" +
		"\ruploading 50.0MiB of 100.0MiB (50%), 10.0MiB/s\033[K" +
		"\r\033[K"
	if got := out.String(); got != want {
		t.Errorf("terminal output\n%q\nwant\n%q", got, want)
	}

	// An upload over before uploadShowAfter leaves nothing on stderr.
	out.Reset()
	u = newUploadProgress(&out, true, clock.now)
	readN(t, u.wrap(memFile("small", 10)), 10)
	clock.add(sec(0.25))
	u.tick()
	u.close(true)
	if out.Len() != 0 {
		t.Errorf("a quick upload printed %q", out.String())
	}
}

func TestUploadProgressPlain(t *testing.T) {
	var out bytes.Buffer
	clock := newFakeClock()
	u := newUploadProgress(&out, false, clock.now)
	f := u.wrap(memFile("big.bin", 30<<20))
	r := readN(t, f, 10<<20)
	clock.add(sec(5))
	u.tick() // before plainEvery: no line
	clock.add(sec(10))
	u.tick()
	clock.add(sec(1))
	u.tick()
	io.ReadAll(r)
	clock.add(sec(4))
	u.close(true)
	want := "uploaded 10.0MiB of 30.0MiB (33%), 682.7KiB/s\n" +
		"uploaded 30.0MiB in 20.0s\n"
	if got := out.String(); got != want {
		t.Errorf("plain output\n%s\nwant\n%s", got, want)
	}

	// A failed enqueue has no closing line.
	out.Reset()
	u = newUploadProgress(&out, false, clock.now)
	u.wrap(memFile("x", 10))
	u.close(false)
	if out.Len() != 0 {
		t.Errorf("a failed upload printed %q", out.String())
	}
}
