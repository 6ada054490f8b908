package executor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
)

// snapshotPreload is what the test template imports: the test image has
// numpy and matplotlib (not pandas); random, tempfile and uuid are named so
// that the template holds their state, which restored jobs must not share.
var snapshotPreload = []string{"random", "tempfile", "uuid", "numpy", "matplotlib", "matplotlib.pyplot"}

// snapshotEnv is a job's environment as the worker makes it, without the
// job's own variables.
var snapshotEnv = []string{"HOME=/work", "INPUT_DIR=/mnt/inputs", "LANG=C.UTF-8", "OUTPUT_DIR=/mnt/outputs", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

func snapshotLimits() Limits {
	return Limits{Timeout: 2 * time.Minute, Memory: 512 << 20, Disk: 64 << 20, OutputBytes: 1 << 20, OutputFiles: 10, Pids: 128, LogBytes: 1 << 20, LogTail: 8192}
}

// sharedTemplate is built once per test binary (it takes seconds) into a
// directory of its own, which TestMain removes; each test restores it with
// a runner of its own.
var sharedTemplate struct {
	once sync.Once
	dir  string
	t    *Template
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedTemplate.dir != "" {
		os.RemoveAll(sharedTemplate.dir)
	}
	os.Exit(code)
}

// templateSpec is the test template's spec, stored in dir.
func templateSpec(t *testing.T, rootfs, dir string) TemplateSpec {
	t.Helper()
	img := testenv.NeedImage(t)
	meta, err := image.Lookup(img.Dir, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	return TemplateSpec{Image: rootfs, Dir: dir, ImageDigest: meta.Digest, Preload: snapshotPreload, Env: snapshotEnv, UID: 1000, GID: 1000, Limits: snapshotLimits()}
}

// snapshotRunner is a runner of its own, the shared template and a
// SnapshotRunner over them.
func snapshotRunner(t *testing.T) (*RunscRunner, *SnapshotRunner, *Template, string) {
	t.Helper()
	r, rootfs := testRunner(t)
	sharedTemplate.once.Do(func() {
		sharedTemplate.dir, sharedTemplate.err = os.MkdirTemp("", "sandq-snapshot-test-")
		if sharedTemplate.err == nil {
			sharedTemplate.t, sharedTemplate.err = r.EnsureTemplate(context.Background(), templateSpec(t, rootfs, sharedTemplate.dir))
		}
	})
	if sharedTemplate.err != nil {
		t.Fatal(sharedTemplate.err)
	}
	p, err := NewSnapshotRunner(r, []*Template{sharedTemplate.t})
	if err != nil {
		t.Fatal(err)
	}
	return r, p, sharedTemplate.t, rootfs
}

func pythonSpec(rootfs string, args ...string) Spec {
	return Spec{
		Name: "snapshot-test", Image: rootfs, Args: append([]string{"/usr/bin/python3", JobMount + "/job.py"}, args...),
		Env: snapshotEnv, UID: 1000, GID: 1000, Limits: snapshotLimits(),
	}
}

// runRestoredAndCold runs script as spec's job restored (through p) and
// cold (through r), and checks each started so.
func runRestoredAndCold(t *testing.T, p, r Runner, spec Spec, script string) (restored, cold ran) {
	t.Helper()
	restored, cold = runPython(t, p, spec, script), runPython(t, r, spec, script)
	if restored.out.StartMode != StartRestored || cold.out.StartMode != StartCold {
		t.Fatalf("%s: start modes %q and %q", strings.Join(spec.Args[2:], " "), restored.out.StartMode, cold.out.StartMode)
	}
	return restored, cold
}

// ran is one job's run through a runner.
type ran struct {
	out     *Outcome
	outputs map[string]string
	stdout  string
	stderr  string
	id      string
}

// runPython runs script as spec's job through runner, as the worker does
// (Prepare, Create beside writing the files, Run, Outputs, Release).
func runPython(t *testing.T, runner Runner, spec Spec, script string) ran {
	t.Helper()
	ctx := context.Background()
	sb, err := runner.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sb.Release(ctx); err != nil {
			t.Errorf("release: %v", err)
		}
	}()
	created := make(chan error, 1)
	go func() { created <- sb.Create(ctx) }()
	if err := os.WriteFile(filepath.Join(sb.JobDir(), "job.py"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sb.InputsDir(), "in.txt"), []byte("the input"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	out, err := sb.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := ran{out: out, outputs: map[string]string{}, stdout: string(out.Stdout.Tail), stderr: string(out.Stderr.Tail), id: sb.ID()}
	c, err := sb.Outputs()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range c.Files {
		b, err := os.ReadFile(filepath.Join(sb.(interface{ OutputsDir() string }).OutputsDir(), f.Path))
		if err != nil {
			t.Fatal(err)
		}
		res.outputs[f.Path] = string(b)
	}
	return res
}

// noLeftovers fails t when anything of sandbox id is left: its container,
// mounts below its directory, its cgroup, its scratch space.
func noLeftovers(t *testing.T, r *RunscRunner, id string) {
	t.Helper()
	if ids, err := r.Containers(context.Background()); err != nil || slices.Contains(ids, id) {
		t.Errorf("container %s left: %v %v", id, ids, err)
	}
	// runsc keeps one shared mount in its root (null-netns); a sandbox's
	// are under its scratch directory.
	if m, err := runsc.MountsUnder(filepath.Join(r.dir, "sandboxes", id)); err != nil || len(m) != 0 {
		t.Errorf("mounts left: %v %v", m, err)
	}
	v1, v2, _ := runsc.CgroupRoots()
	for _, root := range append([]string{v2}, v1["memory"], v1["pids"]) {
		if root == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, r.cgroupDir(), id)); err == nil {
			t.Errorf("cgroup %s left in %s", id, root)
		}
	}
	if _, err := os.Stat(filepath.Join(r.dir, "sandboxes", id)); err == nil {
		t.Errorf("scratch dir of %s left", id)
	}
}

func exitCode(o *Outcome) string {
	if o.ExitCode == nil {
		return "none (" + o.Signal + ")"
	}
	return fmt.Sprint(*o.ExitCode)
}

// A template is built once and found again by its key; its metadata says
// what it was made of; another preload list is another template, and a
// stale one (another image digest) is removed when a new one is built.
func TestSnapshotTemplateIsKeyedAndReused(t *testing.T) {
	r, _, tmpl, rootfs := snapshotRunner(t)
	ctx := context.Background()
	i := tmpl.Info
	if i.Memory != 512<<20 || i.Disk != 64<<20 || i.Python != DefaultPython || strings.Join(i.Preload, ",") != strings.Join(snapshotPreload, ",") ||
		!strings.HasPrefix(i.ImageDigest, "sha256:") || !strings.HasPrefix(i.RunscDigest, "sha256:") || !strings.HasPrefix(i.Digest, "sha256:") || i.CheckpointBytes <= 0 {
		t.Fatalf("template metadata %+v", i)
	}
	if filepath.Dir(tmpl.Dir) != sharedTemplate.dir || filepath.Base(tmpl.Dir) != i.Key {
		t.Fatalf("template in %s, want %s/%s", tmpl.Dir, sharedTemplate.dir, i.Key)
	}
	t.Logf("template: preload %d ms, checkpoint %d ms, %d MiB", i.PreloadMS, i.CheckpointMS, i.CheckpointBytes>>20)
	again, err := r.EnsureTemplate(ctx, templateSpec(t, rootfs, sharedTemplate.dir))
	if err != nil {
		t.Fatal(err)
	}
	if again.Dir != tmpl.Dir || again.Info.Created != i.Created || again.Info.Digest != i.Digest {
		t.Fatalf("the same spec built a new template: %+v, had %+v", again.Info, i)
	}

	// Another list is another key; a template of another image digest in
	// the same directory is stale and goes when a new one is built.
	dir := t.TempDir()
	spec := templateSpec(t, rootfs, dir)
	stale := spec
	stale.ImageDigest = "sha256:" + strings.Repeat("0", 64)
	staleInfo, err := r.templateInfo(ctx, stale.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	staleDir := filepath.Join(dir, staleInfo.Key)
	os.MkdirAll(staleDir, 0o700)
	b, _ := json.Marshal(staleInfo)
	os.WriteFile(filepath.Join(staleDir, templateMetaFile), b, 0o600)
	spec.Preload = []string{"json"}
	other, err := r.EnsureTemplate(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if other.Info.Key == i.Key || filepath.Dir(other.Dir) != dir {
		t.Fatalf("a template of another preload list has key %s in %s (first %s)", other.Info.Key, other.Dir, i.Key)
	}
	if _, err := os.Stat(staleDir); err == nil {
		t.Error("the template of another image digest was not removed")
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Errorf("template builds left containers %v", ids)
	}
}

// A template whose preload fails is not made: the error names the
// template and carries the import's error, and nothing is left.
func TestSnapshotTemplateWithAFailingImportIsRefused(t *testing.T) {
	r, rootfs := testRunner(t)
	dir := t.TempDir()
	spec := templateSpec(t, rootfs, dir)
	spec.Preload = []string{"numpy", "no_such_module_here"}
	_, err := r.EnsureTemplate(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "snapshot template "+dir) || !strings.Contains(err.Error(), "No module named 'no_such_module_here'") {
		t.Fatalf("EnsureTemplate: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a failed build left %v", ents)
	}
	if ids, _ := r.Containers(context.Background()); len(ids) != 0 {
		t.Errorf("containers left: %v", ids)
	}
	for _, bad := range []TemplateSpec{
		{Image: rootfs, Preload: []string{"numpy"}, Limits: snapshotLimits()},
		{Image: rootfs, ImageDigest: "sha256:x", Preload: []string{"os; import evil"}, Limits: snapshotLimits()},
		{Image: rootfs, ImageDigest: "sha256:x", Limits: snapshotLimits()},
		{Image: rootfs, ImageDigest: "sha256:x", Preload: []string{"numpy"}, Python: "/usr/bin/no-python", Limits: snapshotLimits()},
	} {
		if _, err := r.EnsureTemplate(context.Background(), bad); err == nil {
			t.Errorf("EnsureTemplate(%+v) made a template", bad)
		}
	}
}

// Restored jobs run their scripts as cold interpreters would: argv,
// environment, working directory, exit codes, uncaught exceptions, their
// own stdout, stderr, inputs and outputs.
func TestSnapshotRestoredJobsRunLikeColdOnes(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	script := `import os, sys, json
print("first line")
print("to stderr", file=sys.stderr)
with open(os.path.join(os.environ["OUTPUT_DIR"], "facts.json"), "w") as f:
    json.dump({"argv": sys.argv, "cwd": os.getcwd(), "greeting": os.environ.get("GREETING"), "input": open("/mnt/inputs/in.txt").read(),
               "main": __name__, "file": __file__, "path0": sys.path[0], "uid": os.getuid(), "globals": sorted(globals())}, f)
mode = sys.argv[1]
if mode == "exit3":
    sys.exit(3)
if mode == "raise":
    def inner():
        raise ValueError("boom")
    inner()
`
	for _, c := range []struct {
		mode string
		code int
	}{{"ok", 0}, {"exit3", 3}, {"raise", 1}} {
		spec := pythonSpec(rootfs, c.mode, "it's two words")
		spec.Env = append(append([]string(nil), spec.Env...), "GREETING=hello 'world'")
		restored, cold := runRestoredAndCold(t, p, r, spec, script)
		for name, x := range map[string]ran{"restored": restored, "cold": cold} {
			if x.out.ExitCode == nil || *x.out.ExitCode != c.code {
				t.Errorf("%s %s: exit %s, want %d; stderr %q", c.mode, name, exitCode(x.out), c.code, x.stderr)
			}
			if x.stdout != "first line\n" {
				t.Errorf("%s %s: stdout %q", c.mode, name, x.stdout)
			}
			noLeftovers(t, r, x.id)
		}
		if restored.outputs["facts.json"] == "" || restored.outputs["facts.json"] != cold.outputs["facts.json"] {
			t.Errorf("%s: facts differ:\nrestored %s\ncold     %s", c.mode, restored.outputs["facts.json"], cold.outputs["facts.json"])
		}
		if restored.stderr != cold.stderr {
			t.Errorf("%s: stderr differs:\nrestored %q\ncold     %q", c.mode, restored.stderr, cold.stderr)
		}
		if c.mode == "raise" && !strings.Contains(restored.stderr, "Traceback (most recent call last):\n  File \"/mnt/job/job.py\"") {
			t.Errorf("traceback %q", restored.stderr)
		}
	}
	if restored, fallbacks, quarantined := p.Stats(); restored != 3 || fallbacks != 0 || quarantined != 0 {
		t.Errorf("stats: %d restored, %d fallbacks, %d quarantined", restored, fallbacks, quarantined)
	}
}

// A restored job ends as a cold one does, for all it can observe: its
// non-daemon threads finish, atexit handlers and weakref finalizers run,
// logging is shut down, files it left open with buffered writes are
// complete, C stdio buffers are flushed, and SystemExit's status and
// message are the interpreter's; the same script run cold gives the same
// outputs, stdout, stderr and exit status.
func TestSnapshotRestoredJobsEndLikeColdOnes(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	script := `import atexit, ctypes, logging, os, sys, threading, time, weakref
out = os.environ["OUTPUT_DIR"]
mode = sys.argv[1]
left_open = open(os.path.join(out, "left-open.txt"), "w")
left_open.write("buffered line\n" * 200)
binary = open(os.path.join(out, "left-open.bin"), mode="wb", buffering=1 << 20)
binary.write(b"x" * 5000)
logging.basicConfig(filename=os.path.join(out, "job.log"), level=logging.INFO)
logging.info("logged, never shut down by the job")
atexit.register(lambda: print("atexit handler ran"))
class Held:
    pass
held = Held()
weakref.finalize(held, print, "finalizer ran")
def late():
    time.sleep(0.5)
    with open(os.path.join(out, "thread.txt"), "w") as f:
        f.write("the thread finished after the script")
    print("thread done")
threading.Thread(target=late).start()
ctypes.CDLL(None).printf(b"from C stdio, never flushed by the job\n")
print("python stdout, not flushed")
sys.stderr.write("stderr, no newline")
if mode == "message":
    sys.exit("exiting with a message")
if mode == "exit5":
    sys.exit(5)
if mode == "raise":
    raise KeyError("gone")
`
	for _, c := range []struct {
		mode string
		code int
	}{{"ok", 0}, {"message", 1}, {"exit5", 5}, {"raise", 1}} {
		spec := pythonSpec(rootfs, c.mode)
		restored, cold := runRestoredAndCold(t, p, r, spec, script)
		for name, x := range map[string]ran{"restored": restored, "cold": cold} {
			if x.out.ExitCode == nil || *x.out.ExitCode != c.code {
				t.Errorf("%s %s: exit %s, want %d; stderr %q", c.mode, name, exitCode(x.out), c.code, x.stderr)
			}
			if len(x.outputs["left-open.txt"]) != 200*len("buffered line\n") || len(x.outputs["left-open.bin"]) != 5000 ||
				!strings.Contains(x.outputs["job.log"], "logged") || x.outputs["thread.txt"] == "" {
				t.Errorf("%s %s: outputs %d, %d bytes, log %q, thread %q", c.mode, name, len(x.outputs["left-open.txt"]), len(x.outputs["left-open.bin"]), x.outputs["job.log"], x.outputs["thread.txt"])
			}
			for _, want := range []string{"from C stdio", "python stdout", "atexit handler ran", "finalizer ran", "thread done"} {
				if !strings.Contains(x.stdout, want) {
					t.Errorf("%s %s: stdout lacks %q: %q", c.mode, name, want, x.stdout)
				}
			}
		}
		if restored.stdout != cold.stdout || restored.stderr != cold.stderr {
			t.Errorf("%s: restored and cold differ:\nstdout %q\n       %q\nstderr %q\n       %q", c.mode, restored.stdout, cold.stdout, restored.stderr, cold.stderr)
		}
		for name, body := range cold.outputs {
			if restored.outputs[name] != body {
				t.Errorf("%s: output %s differs", c.mode, name)
			}
		}
	}
}

// Restored jobs share nothing: their random numbers, uuids and temporary
// file names differ, a file one writes under /tmp, /work or /dev/shm is not
// there for the next, and they find /tmp and /work as a cold job does (the
// template's own writes removed).
func TestSnapshotRestoredJobsShareNoState(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	script := `import os, random, uuid, tempfile, json, secrets
import numpy as np
seen = {d: sorted(os.listdir(d)) for d in ("/tmp", "/work", "/dev/shm")}
fd, name = tempfile.mkstemp()
for d in ("/tmp", "/work", "/dev/shm"):
    with open(os.path.join(d, "left-by-a-job"), "w") as f:
        f.write("x")
json.dump({"random": random.random(), "uuid": str(uuid.uuid4()), "tmp": name, "np": float(np.random.random()),
           "secret": secrets.token_hex(8), "seen": seen}, open("/mnt/outputs/state.json", "w"))
`
	type state struct {
		Random float64             `json:"random"`
		UUID   string              `json:"uuid"`
		Tmp    string              `json:"tmp"`
		NP     float64             `json:"np"`
		Secret string              `json:"secret"`
		Seen   map[string][]string `json:"seen"`
	}
	var states []state
	for i := 0; i < 3; i++ {
		x := runPython(t, p, pythonSpec(rootfs), script)
		if x.out.StartMode != StartRestored || x.out.ExitCode == nil || *x.out.ExitCode != 0 {
			t.Fatalf("job %d: %s exit %s, stderr %q", i, x.out.StartMode, exitCode(x.out), x.stderr)
		}
		var s state
		if err := json.Unmarshal([]byte(x.outputs["state.json"]), &s); err != nil {
			t.Fatal(err)
		}
		states = append(states, s)
	}
	cold := runPython(t, r, pythonSpec(rootfs), script)
	var coldState state
	if err := json.Unmarshal([]byte(cold.outputs["state.json"]), &coldState); err != nil {
		t.Fatalf("cold: %v; stderr %q", err, cold.stderr)
	}
	for i, s := range states {
		for j := 0; j < i; j++ {
			o := states[j]
			if s.Random == o.Random || s.UUID == o.UUID || s.Tmp == o.Tmp || s.NP == o.NP || s.Secret == o.Secret {
				t.Errorf("jobs %d and %d share state: %+v and %+v", j, i, o, s)
			}
		}
		// The first job's files are not there for the later ones, and none
		// sees what the template wrote.
		if fmt.Sprint(s.Seen) != fmt.Sprint(coldState.Seen) {
			t.Errorf("job %d saw %v, a cold job %v", i, s.Seen, coldState.Seen)
		}
	}
}

// A restored job that runs past its timeout is killed like a cold one, and
// nothing of it is left.
func TestSnapshotRestoredJobTimesOut(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	spec := pythonSpec(rootfs)
	spec.Limits.Timeout = 2 * time.Second
	began := time.Now()
	x := runPython(t, p, spec, "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n")
	if x.out.StartMode != StartRestored || !x.out.TimedOut || x.out.ExitCode != nil || x.out.Signal != "SIGKILL" || x.stdout != "sleeping\n" {
		t.Fatalf("outcome %+v, stdout %q", x.out, x.stdout)
	}
	if d := time.Since(began); d > time.Minute {
		t.Errorf("the timed-out job took %s", d)
	}
	noLeftovers(t, r, x.id)
}

// A job that does not fit the template starts cold from the wrapped runner:
// each refusal bites.
func TestSnapshotFits(t *testing.T) {
	tmpl := &Template{rootfs: "/img/rootfs", Info: TemplateInfo{Python: DefaultPython, UID: 1000, GID: 1000, Memory: 512 << 20, Disk: 64 << 20, Env: snapshotEnv}}
	base := pythonSpec("/img/rootfs", "a")
	if !tmpl.Fits(base) {
		t.Fatal("the template's own shape does not fit")
	}
	withEnv := func(kv string) Spec {
		s := base
		s.Env = append(append([]string(nil), base.Env...), kv)
		return s
	}
	if !tmpl.Fits(withEnv("GREETING=hi")) {
		t.Error("a job with a variable of its own does not fit")
	}
	networked := base
	networked.Egress = &Egress{Policy: egress.Policy{Hosts: []string{"example.com"}}}
	if !tmpl.Fits(networked) {
		t.Error("a networked job does not fit: it is restored into its own network namespace")
	}
	for name, change := range map[string]func(s *Spec){
		"another image":      func(s *Spec) { s.Image = "/other/rootfs" },
		"another user":       func(s *Spec) { s.UID = 1001 },
		"another group":      func(s *Spec) { s.GID = 1001 },
		"more memory":        func(s *Spec) { s.Limits.Memory *= 2 },
		"less memory":        func(s *Spec) { s.Limits.Memory /= 2 },
		"another disk":       func(s *Spec) { s.Limits.Disk *= 2 },
		"node":               func(s *Spec) { s.Args = []string{"/usr/bin/node", JobMount + "/job.js"} },
		"an option":          func(s *Spec) { s.Args = []string{DefaultPython, "-u", JobMount + "/job.py"} },
		"no script":          func(s *Spec) { s.Args = []string{DefaultPython} },
		"script elsewhere":   func(s *Spec) { s.Args = []string{DefaultPython, "/tmp/job.py"} },
		"the launcher":       func(s *Spec) { s.Args = []string{DefaultPython, JobMount + "/" + SnapshotLauncherFile} },
		"unclean path":       func(s *Spec) { s.Args = []string{DefaultPython, JobMount + "/../etc/x.py"} },
		"non-UTF-8 argument": func(s *Spec) { s.Args = append(s.Args, "\xff") },
		"PYTHONPATH":         func(s *Spec) { *s = withEnv("PYTHONPATH=/x") },
		"PYTHONHASHSEED":     func(s *Spec) { *s = withEnv("PYTHONHASHSEED=0") },
		"MPLBACKEND":         func(s *Spec) { *s = withEnv("MPLBACKEND=pdf") },
		"OMP_NUM_THREADS":    func(s *Spec) { *s = withEnv("OMP_NUM_THREADS=1") },
		"LC_ALL":             func(s *Spec) { *s = withEnv("LC_ALL=C") },
		"LD_PRELOAD":         func(s *Spec) { *s = withEnv("LD_PRELOAD=/x.so") },
		"GLIBC_TUNABLES":     func(s *Spec) { *s = withEnv("GLIBC_TUNABLES=glibc.malloc.check=3") },
		"another HOME":       func(s *Spec) { s.Env = []string{"HOME=/tmp", "LANG=C.UTF-8"} },
		"no LANG":            func(s *Spec) { s.Env = []string{"HOME=/work"} },
	} {
		s := base
		s.Args = append([]string(nil), base.Args...)
		change(&s)
		if tmpl.Fits(s) {
			t.Errorf("%s: fits", name)
		}
	}
}

// A template that is missing, or whose checkpoint is corrupt, is refused
// with an error naming it, or, found so at a job's restore, quarantined
// (set aside, one log line) while the job runs cold; nothing is left.
func TestSnapshotBrokenTemplatesFallBackCold(t *testing.T) {
	r, _, tmpl, rootfs := snapshotRunner(t)
	ctx := context.Background()
	copyTemplate := func() *Template {
		t.Helper()
		dir := filepath.Join(t.TempDir(), tmpl.Info.Key)
		if err := os.CopyFS(dir, os.DirFS(tmpl.Dir)); err != nil {
			t.Fatal(err)
		}
		c := *tmpl
		c.Dir = dir
		return &c
	}
	script := "import sys\nprint('ran', sys.argv[1:])\n"

	// Corrupt on disk: loading it says so, naming it.
	corrupt := copyTemplate()
	state := filepath.Join(corrupt.CheckpointDir(), templateStateFile)
	if err := os.WriteFile(state, []byte("not a checkpoint"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTemplate(corrupt.Dir, rootfs); err == nil || !strings.Contains(err.Error(), corrupt.Dir) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("LoadTemplate of a corrupt template: %v", err)
	}
	// Corrupted after it was loaded: the restore fails, the job runs cold.
	p, err := NewSnapshotRunner(r, []*Template{corrupt})
	if err != nil {
		t.Fatal(err)
	}
	x := runPython(t, p, pythonSpec(rootfs, "a"), script)
	if x.out.StartMode != StartCold || x.out.ExitCode == nil || *x.out.ExitCode != 0 || x.stdout != "ran ['a']\n" {
		t.Fatalf("job on a corrupt template: %s exit %s stdout %q stderr %q", x.out.StartMode, exitCode(x.out), x.stdout, x.stderr)
	}
	noLeftovers(t, r, x.id)
	if restored, fallbacks, quarantined := p.Stats(); restored != 0 || fallbacks != 1 || quarantined != 1 {
		t.Errorf("stats: %d restored, %d fallbacks, %d quarantined", restored, fallbacks, quarantined)
	}
	if _, err := os.Stat(corrupt.Dir); err == nil {
		t.Error("the quarantined template was not set aside")
	}
	// Quarantined: the next job does not try it.
	y := runPython(t, p, pythonSpec(rootfs, "b"), script)
	if y.out.StartMode != StartCold || y.stdout != "ran ['b']\n" {
		t.Fatalf("next job: %s stdout %q", y.out.StartMode, y.stdout)
	}
	if _, fallbacks, _ := p.Stats(); fallbacks != 1 {
		t.Errorf("a quarantined template was tried again (%d fallbacks)", fallbacks)
	}

	// Missing: the job is prepared cold by the wrapped runner.
	missing := copyTemplate()
	os.RemoveAll(missing.Dir)
	p, err = NewSnapshotRunner(r, []*Template{missing})
	if err != nil {
		t.Fatal(err)
	}
	z := runPython(t, p, pythonSpec(rootfs, "c"), script)
	if z.out.StartMode != StartCold || z.stdout != "ran ['c']\n" {
		t.Fatalf("job on a missing template: %s stdout %q", z.out.StartMode, z.stdout)
	}
	if _, _, quarantined := p.Stats(); quarantined != 1 {
		t.Errorf("the missing template was not quarantined")
	}
	noLeftovers(t, r, z.id)
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Errorf("containers left: %v", ids)
	}
}

// Snapshots need the runsc runner.
func TestSnapshotRunnerNeedsTheRunscRunner(t *testing.T) {
	if _, err := NewSnapshotRunner(otherRunner{}, nil); err == nil || !strings.Contains(err.Error(), "snapshots need the runsc runner") {
		t.Fatalf("NewSnapshotRunner: %v", err)
	}
}

// Figures, not assertions: from Create to the script's first line, for a
// job importing numpy and matplotlib.pyplot, restored and cold.
func TestSnapshotFigures(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	script := "import time\nt0 = time.time()\nimport numpy, matplotlib.pyplot\nprint(t0, time.time())\n"
	measure := func(runner Runner) (first, imported, total time.Duration, mode string) {
		ctx := context.Background()
		sb, err := runner.Prepare(ctx, pythonSpec(rootfs))
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Release(ctx)
		os.WriteFile(filepath.Join(sb.JobDir(), "job.py"), []byte(script), 0o644)
		began := time.Now()
		if err := sb.Create(ctx); err != nil {
			t.Fatal(err)
		}
		out, err := sb.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var t0, t1 float64
		if _, err := fmt.Sscan(string(out.Stdout.Tail), &t0, &t1); err != nil {
			t.Fatalf("stdout %q stderr %q", out.Stdout.Tail, out.Stderr.Tail)
		}
		at := func(f float64) time.Duration { return time.Unix(0, int64(f*1e9)).Sub(began) }
		return at(t0), at(t1), out.FinishedAt.Sub(began), out.StartMode
	}
	for i := 0; i < 3; i++ {
		for _, runner := range []Runner{p, r} {
			first, imported, total, mode := measure(runner)
			t.Logf("%-8s script's first line at %4d ms, imports done at %4d ms, container gone at %4d ms after Create began",
				mode, first.Milliseconds(), imported.Milliseconds(), total.Milliseconds())
		}
	}
	// From a pool: Create does nothing, the request starts the job.
	if err := p.StartPools(snapshotLimits(), 1); err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	for i := 0; i < 3; i++ {
		for ready, _, _ := p.PoolStats(); ready < 1; ready, _, _ = p.PoolStats() {
			time.Sleep(20 * time.Millisecond)
		}
		first, imported, total, _ := measure(p)
		t.Logf("pooled   script's first line at %4d ms, imports done at %4d ms, container gone at %4d ms after Create began",
			first.Milliseconds(), imported.Milliseconds(), total.Milliseconds())
	}
}

// A pool keeps sandboxes restored ahead of their jobs: a job of its shape
// takes one (no create or restore on its path) and runs as any restored
// job; the pool restores another once it is released; a job of another
// shape is restored for itself; Close leaves nothing.
func TestSnapshotPool(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	ctx := context.Background()
	if err := p.StartPools(snapshotLimits(), 0); err == nil {
		t.Error("a pool of 0 started")
	}
	if err := p.StartPools(snapshotLimits(), 2); err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	waitPool := func(n int) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			if ready, _, _ := p.PoolStats(); ready == n {
				return
			}
			if time.Now().After(deadline) {
				ready, _, _ := p.PoolStats()
				t.Fatalf("pool holds %d after a minute, want %d", ready, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPool(2)
	script := "import sys, os\nprint('ran', sys.argv[1:], os.environ['GREETING'], open('/mnt/inputs/in.txt').read())\nsys.exit(4)\n"
	spec := pythonSpec(rootfs, "x y")
	spec.Env = append(append([]string(nil), spec.Env...), "GREETING=hi")
	spec.Limits.Timeout = time.Minute
	x := runPython(t, p, spec, script)
	if x.out.StartMode != StartRestored || x.out.ExitCode == nil || *x.out.ExitCode != 4 || x.stdout != "ran ['x y'] hi the input\n" {
		t.Fatalf("pooled job: %s exit %s stdout %q stderr %q", x.out.StartMode, exitCode(x.out), x.stdout, x.stderr)
	}
	t.Logf("pooled job: set-up %d ms (Create to the request written)", x.out.StartedAt.Sub(x.out.CreatedAt).Milliseconds())
	noLeftovers(t, r, x.id)
	if _, hits, _ := p.PoolStats(); hits != 1 {
		t.Errorf("hits %d, want 1", hits)
	}
	waitPool(2)
	other := spec
	other.Limits.OutputFiles = 3
	y := runPython(t, p, other, script)
	if y.out.StartMode != StartRestored || y.stdout != "ran ['x y'] hi the input\n" {
		t.Fatalf("job of another shape: %s stdout %q", y.out.StartMode, y.stdout)
	}
	if _, hits, misses := p.PoolStats(); hits != 1 || misses != 0 {
		t.Errorf("a job of another shape took from the pool: hits %d misses %d", hits, misses)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Errorf("containers after Close: %v", ids)
	}
	if sbs, _ := filepath.Glob(filepath.Join(r.dir, "sandboxes", "*")); len(sbs) != 0 {
		t.Errorf("sandboxes after Close: %v", sbs)
	}
}

// A restored sandbox released before it ran (its job cancelled, or its
// download failed) leaves nothing.
func TestSnapshotReleasedBeforeRunLeavesNothing(t *testing.T) {
	r, p, _, rootfs := snapshotRunner(t)
	ctx := context.Background()
	sb, err := p.Prepare(ctx, pythonSpec(rootfs))
	if err != nil {
		t.Fatal(err)
	}
	if !IsRestored(sb) {
		t.Fatal("a job of the template's shape was not prepared for a restore")
	}
	if err := sb.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := r.Containers(ctx); !slices.Contains(ids, sb.ID()) {
		t.Fatalf("no container %s after Create: %v", sb.ID(), ids)
	}
	if err := sb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if !goneWithin(sb.ID(), 30*time.Second) {
		t.Errorf("processes of %s still there", sb.ID())
	}
	noLeftovers(t, r, sb.ID())
}
