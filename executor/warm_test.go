package executor

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/internal/runsc"
)

// otherRunner is a Runner that is not the runsc one.
type otherRunner struct{ Runner }

func TestWarmRunnerRefusesBadShapes(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	// An image with /bin and a file in /tmp, but no shell or env.
	bare := t.TempDir()
	for _, d := range []string{"bin", "tmp"} {
		os.Mkdir(filepath.Join(bare, d), 0o755)
	}
	os.WriteFile(filepath.Join(bare, "tmp", "keep"), nil, 0o644)
	noEnv := sleeper(bare)
	networked := sleeper(image)
	networked.Egress = &Egress{Policy: egress.Policy{Hosts: []string{"example.com"}}}
	zeroMemory := sleeper(image)
	zeroMemory.Limits.Memory = 0
	for _, c := range []struct {
		name  string
		base  Runner
		shape Spec
		size  int
		want  string
	}{
		{"size 0", r, sleeper(image), 0, "want 1 to 64"},
		{"size 65", r, sleeper(image), 65, "want 1 to 64"},
		{"network", r, networked, 1, "has a network"},
		{"no shell or env in the image", r, noEnv, 1, "no executable /bin/sh"},
		{"bad limits", r, zeroMemory, 1, "limits must all be positive"},
		{"another runner", otherRunner{r}, sleeper(image), 1, "warm sandboxes need the runsc runner"},
	} {
		if _, err := NewWarmRunner(c.base, c.shape, c.size); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Errorf("refused pools left containers %v", ids)
	}
}

// waitReady waits until the pool holds n sandboxes.
func waitReady(t *testing.T, p *WarmRunner, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for p.Ready() != n {
		if time.Now().After(deadline) {
			t.Fatalf("pool holds %d sandboxes after 30s, want %d", p.Ready(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A warm sandbox runs its job with the job's own arguments and exactly its
// environment, is used once, and is replaced once released; jobs of another
// shape get a cold one from the wrapped runner; Close leaves nothing.
func TestWarmRunner(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	pool, err := NewWarmRunner(r, sleeper(image), 2)
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	defer pool.Close(ctx)
	waitReady(t, pool, 2)
	if ids, _ := r.Containers(ctx); len(ids) != 2 {
		t.Fatalf("containers %v, want the pool's 2", ids)
	}

	// Jobs that do not fit get a cold sandbox, or the wrapped runner's
	// refusal, and take nothing.
	bigger := sleeper(image)
	bigger.Limits.Memory *= 2
	networked := sleeper(image)
	networked.Egress = &Egress{Policy: egress.Policy{Hosts: []string{"example.com"}}}
	launchNamed := sleeper(image)
	launchNamed.Args = []string{"/bin/sh", JobMount + "/" + LaunchFile}
	otherImage := sleeper(image + "/")
	for name, s := range map[string]Spec{"more memory": bigger, "network": networked, "script named like the launcher": launchNamed, "another image": otherImage} {
		sb, err := pool.Prepare(ctx, s)
		if name == "network" {
			if err == nil || !strings.Contains(err.Error(), "no network configured") {
				t.Errorf("%s: Prepare = %v, want the runsc runner's refusal", name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if IsWarm(sb) {
			t.Errorf("%s: Prepare gave a warm sandbox", name)
		}
		if err := sb.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if pool.Ready() != 2 {
		t.Fatalf("ill-fitting jobs changed the pool: %d ready", pool.Ready())
	}

	// The job's command is env itself: its stdout is its environment,
	// which must be what a cold sandbox gives it.
	job := sleeper(image)
	job.Name = "warm-job"
	job.Args = []string{"/usr/bin/env"}
	job.Env = []string{"PATH=/usr/bin:/bin", "HOME=/work", "QUOTED=it's a \"test\" $HOME `x`", "MULTI=a\nb", "LANG=C.UTF-8"}
	job.Limits.Timeout = time.Minute
	noHome := job
	noHome.Env = job.Env[2:]
	if sb, err := pool.Prepare(ctx, noHome); err != nil || IsWarm(sb) {
		t.Fatalf("a job without HOME: %v, warm %v", err, err == nil && IsWarm(sb))
	} else {
		sb.Release(ctx)
	}
	run := func(sb Sandbox) *Outcome {
		t.Helper()
		out, err := sb.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if out.ExitCode == nil || *out.ExitCode != 0 {
			t.Fatalf("exit %v stderr %q", out.ExitCode, out.Stderr.Tail)
		}
		return out
	}
	envOf := func(out *Outcome) []string {
		lines := strings.Split(strings.TrimSuffix(string(out.Stdout.Tail), "\n"), "\n")
		slices.Sort(lines)
		return lines
	}
	cold, err := r.Prepare(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	coldOut := run(cold)
	coldEnv := envOf(coldOut)
	cold.Release(ctx)
	want := strings.Split(strings.Join(job.Env, "\n"), "\n")
	slices.Sort(want)
	if !slices.Equal(coldEnv, want) || coldOut.Warm {
		t.Fatalf("a cold sandbox's environment (warm %v):\n%q\nwant:\n%q", coldOut.Warm, coldEnv, want)
	}
	sb, err := pool.Prepare(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Release(ctx)
	if !IsWarm(sb) {
		t.Fatal("Prepare gave no warm sandbox")
	}
	// As the worker does for every sandbox: the container exists already.
	if err := sb.Create(ctx); err != nil {
		t.Fatalf("Create of a warm sandbox: %v", err)
	}
	out := run(sb)
	if got := envOf(out); !slices.Equal(got, coldEnv) {
		t.Fatalf("a warm sandbox's environment:\n%q\nwant, as a cold one's:\n%q", got, coldEnv)
	}
	if !out.Warm {
		t.Fatal("the outcome does not say the sandbox was warm")
	}
	if _, err := sb.Run(ctx); err == nil {
		t.Fatal("a warm sandbox ran twice")
	}
	hits, misses, failures := pool.Stats()
	if hits != 1 || misses != 0 || failures != 0 {
		t.Errorf("stats: %d hits, %d misses, %d failures", hits, misses, failures)
	}
	// The pool makes no new sandbox until the one taken is released: the
	// worker releases it when the job is done.
	time.Sleep(500 * time.Millisecond)
	if n := pool.Ready(); n != 1 {
		t.Fatalf("%d ready before the release, want 1", n)
	}
	if err := sb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitReady(t, pool, 2)

	// Arguments with spaces and quotes reach the script as they were; the
	// script arrived after the container was created.
	job.Args = []string{"/bin/sh", JobMount + "/my job.sh", "it's", "a b", ""}
	sb, err = pool.Prepare(ctx, job)
	if err != nil || !IsWarm(sb) {
		t.Fatalf("Prepare found no warm sandbox: %v", err)
	}
	defer sb.Release(ctx)
	script := "printf '%s|' \"$0\" \"$#\" \"$@\" > " + OutputsMount + "/args.txt\n"
	if err := os.WriteFile(filepath.Join(sb.JobDir(), "my job.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := sb.Run(ctx); err != nil || out.ExitCode == nil || *out.ExitCode != 0 {
		t.Fatalf("run: %v, %+v", err, out)
	}
	coll, err := sb.Outputs()
	if err != nil || len(coll.Files) != 1 {
		t.Fatalf("outputs %+v: %v", coll, err)
	}
	f, err := coll.Open(coll.Files[0])
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if want := JobMount + "/my job.sh|3|it's|a b||"; string(b) != want {
		t.Fatalf("args %q, want %q", b, want)
	}
	sb.Release(ctx)

	// Empty pool: a job of the shape misses, and gets a cold sandbox.
	drain := []Sandbox{}
	waitReady(t, pool, 2)
	for range 2 {
		s, err := pool.Prepare(ctx, job)
		if err != nil || !IsWarm(s) {
			t.Fatalf("Prepare found no warm sandbox: %v", err)
		}
		drain = append(drain, s)
	}
	pool.pool.mu.Lock()
	pool.pool.closed = true // stop refills for the check
	pool.pool.mu.Unlock()
	if s, err := pool.Prepare(ctx, job); err != nil || IsWarm(s) {
		t.Fatalf("Prepare on an empty pool: %v, warm %v", err, err == nil && IsWarm(s))
	} else {
		s.Release(ctx)
	}
	if _, misses, _ := pool.Stats(); misses != 1 {
		t.Errorf("misses %d, want 1", misses)
	}
	for _, s := range drain {
		if err := s.Release(ctx); err != nil {
			t.Error(err)
		}
	}
	if err := pool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Fatalf("containers left after Close: %v", ids)
	}
	if m, _ := runsc.MountsUnder(filepath.Join(r.dir, "sandboxes")); len(m) != 0 {
		t.Fatalf("mounts left after Close: %v", m)
	}
}

// The launcher leaves the command exactly the job's environment, whether
// it sets it in the shell or (for names a shell cannot export) with env -i.
// Run here with the host's sh, as the sandbox's would run it.
func TestLauncherSetsExactlyTheJobsEnvironment(t *testing.T) {
	inherited := []string{"PATH=/bin:/usr/bin", "HOME=/work", "INPUT_DIR=/mnt/inputs", "STALE=1"}
	for name, env := range map[string][]string{
		"shell":  {"PATH=/usr/bin:/bin", "HOME=/home/x", "QUOTED=it's \"q\" $HOME `x` \\", "MULTI=a\nb", "EMPTY="},
		"env -i": {"PATH=/usr/bin:/bin", "HOME=/home/x", "ODD-NAME=1", "QUOTED=it's"},
	} {
		script := launcher([]string{"/usr/bin/env"}, env, inherited)
		if wantEnvI := name == "env -i"; strings.Contains(script, "env -i") != wantEnvI {
			t.Errorf("%s: launcher %q", name, script)
		}
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = inherited
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		want := strings.Split(strings.Join(env, "\n"), "\n")
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: environment\n%q\nwant\n%q\nfrom\n%s", name, got, want, script)
		}
	}
}
