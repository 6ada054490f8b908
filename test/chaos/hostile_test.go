package chaos

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sandq/sandq/jobs"
)

// usage samples, while a hostile job runs, the disk the worker's state
// directory takes (blocks allocated, on its own file system: the outputs
// tmpfs mounts are memory, not disk), the host's available memory and the
// worker's resident memory.
type usage struct {
	mu                  sync.Mutex
	maxDisk, minMem     int64
	maxRSS              int64
	stop, done          chan struct{}
	samples             int
	stateDir            string
	w                   *worker
	baseDisk, startMem  int64
	afterMem, afterDisk int64
}

func sample(w *worker) *usage {
	u := &usage{stop: make(chan struct{}), done: make(chan struct{}), stateDir: w.stateDir, w: w, minMem: memAvailable()}
	u.startMem = u.minMem
	u.baseDisk = dirBytes(w.stateDir)
	go func() {
		defer close(u.done)
		for {
			d, m, r := dirBytes(u.stateDir), memAvailable(), w.rssBytes()
			u.mu.Lock()
			u.maxDisk, u.minMem, u.maxRSS = max(u.maxDisk, d), min(u.minMem, m), max(u.maxRSS, r)
			u.samples++
			u.mu.Unlock()
			select {
			case <-u.stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	return u
}

func (u *usage) finish() {
	close(u.stop)
	<-u.done
	u.afterDisk, u.afterMem = dirBytes(u.stateDir), memAvailable()
}

func (u *usage) String() string {
	return fmt.Sprintf("state dir peak %s (after %s), host available memory lowest %s below the start (after: %s), worker RSS peak %s",
		human(u.maxDisk), human(u.afterDisk), human(max(0, u.startMem-u.minMem)), signed(u.afterMem-u.startMem), human(u.maxRSS))
}

// tail is a log's tail, or "" for a result without logs.
func tail(l *jobs.LogDoc) string {
	if l == nil {
		return ""
	}
	return l.Tail
}

// dirBytes is the disk allocated under dir on dir's own file system.
func dirBytes(dir string) int64 {
	var root syscall.Stat_t
	if syscall.Stat(dir, &root) != nil {
		return 0
	}
	var total int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) != nil {
			return nil
		}
		if st.Dev != root.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		total += st.Blocks * 512
		return nil
	})
	return total
}

// hostile is one hostile job: what it runs, how it may end, and what to
// check of its result (returning the figures for the table).
type hostile struct {
	name  string
	sub   jobs.Submission
	want  []jobs.Status
	check func(t *testing.T, r *jobs.Result) string
	// disk is the most the worker's state dir may take while it runs.
	disk int64
}

func hostileJobs() []hostile {
	stdoutMiB, files, filesCap := 10240, 100000, 1000
	if env.full {
		filesCap = 10000
	}
	list := []hostile{
		{
			name: "fork bomb",
			sub: jobs.Submission{Script: script("bomb.sh", "echo bombing; f() { f | f & }; f; sleep 600\n"),
				Limits: jobs.LimitRequest{TimeoutSeconds: 15, MemoryBytes: 512 << 20}},
			want: []jobs.Status{jobs.StatusTimedOut, jobs.StatusOutOfMemory, jobs.StatusFailed},
			check: func(t *testing.T, r *jobs.Result) string {
				return fmt.Sprintf("ended %s (%s) after %s", r.Status, r.Reason, time.Duration(r.DurationMS)*time.Millisecond)
			},
			disk: 64 << 20,
		},
		{
			name: "memory balloon",
			sub: jobs.Submission{Script: script("balloon.py", "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))\n"),
				Limits: jobs.LimitRequest{TimeoutSeconds: 120, MemoryBytes: 256 << 20}},
			want: []jobs.Status{jobs.StatusOutOfMemory},
			check: func(t *testing.T, r *jobs.Result) string {
				return fmt.Sprintf("ended %s: %s", r.Status, r.Reason)
			},
			disk: 64 << 20,
		},
		{
			name: fmt.Sprintf("%d GiB to stdout", stdoutMiB>>10),
			sub: jobs.Submission{Script: script("flood.py", `import sys
block = b"y" * (1 << 20)
out = sys.stdout.buffer
out.write(b"FIRST\n")
for _ in range(int(sys.argv[1])):
    out.write(block)
out.write(b"\nLAST\n")
out.flush()
`), Args: []string{strconv.Itoa(stdoutMiB)}, Limits: jobs.LimitRequest{TimeoutSeconds: 600, MemoryBytes: 256 << 20}},
			// Bounded by its timeout on a slow host; either way the log
			// stored is capped.
			want: []jobs.Status{jobs.StatusSucceeded, jobs.StatusTimedOut},
			check: func(t *testing.T, r *jobs.Result) string {
				stored := int64(len(download(t, r.Stdout.URL)))
				if stored > 16<<20+100 || r.Stdout.DroppedBytes <= 0 || r.Stdout.Bytes != stored-int64(len(fmt.Sprintf("\n[sandq: %d bytes dropped here]\n", r.Stdout.DroppedBytes)))+r.Stdout.DroppedBytes {
					t.Errorf("stdout: %d bytes, %d dropped, %d stored; want at most the 16MiB log cap stored", r.Stdout.Bytes, r.Stdout.DroppedBytes, stored)
				}
				if r.Status == jobs.StatusSucceeded && (r.Stdout.Bytes != int64(stdoutMiB)<<20+12 || !strings.HasSuffix(r.Stdout.Tail, "LAST\n")) {
					t.Errorf("stdout counted %d bytes, want %d", r.Stdout.Bytes, int64(stdoutMiB)<<20+12)
				}
				return fmt.Sprintf("ended %s after %s; %s written, %s stored (cap 16MiB), %s dropped", r.Status,
					time.Duration(r.DurationMS)*time.Millisecond, human(r.Stdout.Bytes), human(stored), human(r.Stdout.DroppedBytes))
			},
			disk: 256 << 20,
		},
		{
			name: "filling the root overlay",
			sub: jobs.Submission{Script: script("fill.sh", "dd if=/dev/zero of=/tmp/fill bs=1M count=100000 2>&1; echo dd=$?\n"),
				Limits: jobs.LimitRequest{TimeoutSeconds: 120, MemoryBytes: 256 << 20, DiskBytes: 128 << 20}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				if !strings.Contains(r.Stdout.Tail, "No space left on device") || !strings.Contains(r.Stdout.Tail, "dd=1") {
					t.Errorf("writing past the 128MiB disk limit did not fail with ENOSPC: %q", r.Stdout.Tail)
				}
				return "dd stopped with ENOSPC at the 128MiB disk limit"
			},
			disk: 128<<20 + 64<<20,
		},
		{
			name: "filling the outputs dir",
			sub: jobs.Submission{Script: script("fillout.sh", "dd if=/dev/zero of=$OUTPUT_DIR/fill bs=1M count=100000 2>&1; echo dd=$?\n"),
				Limits: jobs.LimitRequest{TimeoutSeconds: 120, MemoryBytes: 256 << 20, OutputBytes: 16 << 20}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				var total int64
				for _, o := range r.Outputs {
					total += o.Size
				}
				if !strings.Contains(r.Stdout.Tail, "No space left on device") || total > 16<<20 {
					t.Errorf("outputs past 16MiB: %q, %d bytes collected", r.Stdout.Tail, total)
				}
				return fmt.Sprintf("ENOSPC at the 16MiB output size; %s collected", human(total))
			},
			disk: 64 << 20,
		},
		{
			name: fmt.Sprintf("%d tiny output files", files),
			sub: jobs.Submission{Script: script("files.py", `import os, sys
out, n = os.environ["OUTPUT_DIR"], 0
try:
    for i in range(int(sys.argv[1])):
        open(os.path.join(out, "f%06d" % i), "w").close()
        n += 1
except OSError as e:
    print("stopped:", e)
print("created", n)
`), Args: []string{strconv.Itoa(files)}, Limits: jobs.LimitRequest{TimeoutSeconds: 300, MemoryBytes: 256 << 20, OutputFiles: filesCap}},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				if len(r.Outputs) > filesCap || !strings.Contains(r.Stdout.Tail, "No space left on device") {
					t.Errorf("%d outputs collected (cap %d); stdout %q", len(r.Outputs), filesCap, r.Stdout.Tail)
				}
				created := strings.TrimSpace(r.Stdout.Tail[strings.LastIndex(r.Stdout.Tail, "created"):])
				return fmt.Sprintf("tried %d, %s before ENOSPC at the %d-entry cap; %d collected and uploaded", files, created, filesCap, len(r.Outputs))
			},
			disk: 64 << 20,
		},
		{
			name: "ignores SIGTERM, sleeps forever",
			sub: jobs.Submission{Script: script("stubborn.sh", "trap '' TERM INT HUP QUIT; echo ignoring; while :; do sleep 1000; done\n"),
				Limits: jobs.LimitRequest{TimeoutSeconds: 5, MemoryBytes: 256 << 20}},
			want: []jobs.Status{jobs.StatusTimedOut},
			check: func(t *testing.T, r *jobs.Result) string {
				d := time.Duration(r.DurationMS) * time.Millisecond
				if d > time.Minute {
					t.Errorf("killed after %s, limit 5s", d)
				}
				return fmt.Sprintf("%s (%s) after %s", r.Status, r.Signal, d.Round(100*time.Millisecond))
			},
			disk: 64 << 20,
		},
		{
			name: "FIFO, socket, device node and symlinks as outputs",
			sub: jobs.Submission{Script: script("special.py", `import os, socket, stat
out = os.environ["OUTPUT_DIR"]
os.symlink("/etc/passwd", out + "/link-abs")
os.symlink("../../../..", out + "/link-up")
os.mkfifo(out + "/fifo")
s = socket.socket(socket.AF_UNIX)
s.bind(out + "/sock")
try:
    os.mknod(out + "/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    print("mknod: made")
except OSError as e:
    print("mknod: refused", e.errno)
open(out + "/real.txt", "w").write("real")
`), Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				if len(r.Outputs) != 1 || r.Outputs[0].Path != "real.txt" {
					t.Errorf("outputs %+v, want only real.txt", r.Outputs)
				}
				keys, _ := env.store.List(context.Background(), jobs.JobPrefix(r.ID))
				uploaded := 0
				for _, k := range keys {
					if strings.Contains(k, "/outputs/") {
						uploaded++
					}
				}
				if uploaded != 1 {
					t.Errorf("%d output objects uploaded: %v", uploaded, keys)
				}
				var skipped []string
				for _, s := range r.SkippedOutputs {
					skipped = append(skipped, s.Path+"="+s.Type)
				}
				// gVisor keeps FIFOs and sockets made on a host mount
				// inside the sandbox: the host sees neither.
				return fmt.Sprintf("only real.txt uploaded; skipped %v; %s; a swap during collection is executor's TestCollectionOpen (collection runs after the sandbox is deleted)",
					skipped, strings.TrimSpace(r.Stdout.Tail))
			},
			disk: 64 << 20,
		},
		{
			name: "reading /proc for the worker's secrets",
			sub: jobs.Submission{Script: script("snoop.py", `import glob, sys
paths = ["/proc/self/environ", "/proc/self/mountinfo", "/proc/mounts", "/proc/self/cmdline", "/proc/cmdline", "/proc/1/environ"]
paths += glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/mountinfo")
n = 0
for p in paths:
    try:
        sys.stdout.buffer.write(p.encode() + b": " + open(p, "rb").read().replace(b"\0", b" ") + b"\n")
        n += 1
    except Exception as e:
        print(p, "unreadable:", e)
print("read", n, "files")
`), Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				all := string(download(t, r.Stdout.URL))
				for _, secret := range []string{env.secretKey, env.canary, "SANDQ_", env.stack.RedisAddr} {
					if strings.Contains(all, secret) {
						t.Errorf("the job read the worker's %q from /proc", secret)
					}
				}
				last := strings.TrimSpace(all[strings.LastIndex(all, "read "):])
				return fmt.Sprintf("%s (%s of environ, cmdline, mountinfo): no S3 secret, no canary, no SANDQ_ variable, no Redis address", last, human(int64(len(all))))
			},
			disk: 64 << 20,
		},
		{
			name: "raw and packet sockets (networked job)",
			sub: jobs.Submission{Script: script("raw.py", `import socket
kinds = [
    ("AF_PACKET/SOCK_RAW", socket.AF_PACKET, socket.SOCK_RAW, 0x0003),
    ("AF_PACKET/SOCK_DGRAM", socket.AF_PACKET, socket.SOCK_DGRAM, 0x0003),
    ("AF_INET/SOCK_RAW/ICMP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("AF_INET/SOCK_RAW/TCP", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    ("AF_INET/SOCK_RAW/RAW", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
    ("AF_INET6/SOCK_RAW/ICMPV6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
]
for name, fam, typ, proto in kinds:
    try:
        s = socket.socket(fam, typ, proto)
        print("OPENED", name)
        s.close()
    except OSError as e:
        print("refused", name, e.errno)
`), Network: []string{netGroup}, Limits: small},
			want: []jobs.Status{jobs.StatusSucceeded},
			check: func(t *testing.T, r *jobs.Result) string {
				if strings.Contains(r.Stdout.Tail, "OPENED") || strings.Count(r.Stdout.Tail, "refused") != 6 {
					t.Errorf("raw or packet sockets opened:\n%s", r.Stdout.Tail)
				}
				return "6 of 6 refused: " + strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(r.Stdout.Tail), "\n", ";")), " ")
			},
			disk: 64 << 20,
		},
	}
	// The security review's classes (issue 13), so they stay fixed.
	list = append(list, securityOutputHostiles()...)
	return append(list, securityEgressHostiles()...)
}

// TestHostileJobs runs each hostile job beside an ordinary one on one
// worker. Each must end in its status, the ordinary job must succeed with
// its output, the worker must be the same process, and the disk the
// worker's state dir takes and the host's memory stay bounded.
func TestHostileJobs(t *testing.T) {
	sc := newScenario(t, 6, "hostile jobs beside an ordinary one")
	const q = "chaos-hostile"
	c := producer(t, q)
	w := sc.worker("hostile", workerOpts{queues: q, concurrency: 2})
	neighbour := script("neighbour.py", `import os, time
nums = [int(x) for x in open(os.environ["INPUT_DIR"] + "/n.txt").read().split()]
time.sleep(1)
open(os.environ["OUTPUT_DIR"] + "/sum", "w").write(str(sum(nums)))
`)
	input := script("n.txt", "1 2 3 4 5 6 7 8 9 10\n")
	for _, h := range hostileJobs() {
		t.Run(h.name, func(t *testing.T) {
			u := sample(w)
			h.sub.Webhook = env.receiver.URL()
			hj := sc.submitT(t, c, h.sub, h.want...)
			nj := sc.submitT(t, c, jobs.Submission{Script: neighbour, Inputs: []jobs.File{input}, Limits: small, Webhook: env.receiver.URL()})
			rn := resultOf(t, nj, 10*time.Minute)
			rh := resultOf(t, hj, 20*time.Minute)
			u.finish()
			if !statusIn(rh.Status, h.want) {
				t.Errorf("ended %s (%s) on attempt %d, want one of %v\nstdout %q\nstderr %q", rh.Status, rh.Reason, rh.Attempt, h.want, tail(rh.Stdout), tail(rh.Stderr))
			}
			if rh.Attempt != 1 {
				t.Errorf("ran %d times: a hostile job's end is its result, not a failure of the system to retry", rh.Attempt)
			}
			if rn.Status != jobs.StatusSucceeded || len(rn.Outputs) != 1 || string(download(t, rn.Outputs[0].URL)) != "55" {
				t.Errorf("the ordinary job beside it: %s (%s) outputs %+v stderr %q", rn.Status, rn.Reason, rn.Outputs, tail(rn.Stderr))
			}
			if !w.alive() {
				t.Fatalf("the worker died:\n%s", w.log())
			}
			fig := ""
			if statusIn(rh.Status, h.want) {
				fig = h.check(t, rh)
			}
			if u.maxDisk > h.disk {
				t.Errorf("the worker's state dir took %s while it ran, bound %s", human(u.maxDisk), human(h.disk))
			}
			if drop := u.startMem - u.minMem; drop > 3<<30 {
				t.Errorf("host available memory fell by %s while it ran", human(drop))
			}
			sc.figureT(t, "%s: %s; the job beside it succeeded; %s", h.name, fig, u)
		})
	}
	sc.finish(10 * time.Minute)
}
