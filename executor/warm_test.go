package executor

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor/egress"
)

func TestWarmPoolRefusesBadShapes(t *testing.T) {
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
		shape Spec
		size  int
		want  string
	}{
		{"size 0", sleeper(image), 0, "want 1 to 64"},
		{"size 65", sleeper(image), 65, "want 1 to 64"},
		{"network", networked, 1, "has a network"},
		{"no shell or env in the image", noEnv, 1, "no executable /bin/sh"},
		{"bad limits", zeroMemory, 1, "limits must all be positive"},
	} {
		if _, err := r.NewWarmPool(c.shape, c.size); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	if ids, _ := r.Containers(ctx); len(ids) != 0 {
		t.Errorf("refused pools left containers %v", ids)
	}
}

// waitReady waits until the pool holds n sandboxes.
func waitReady(t *testing.T, p *WarmPool, n int) {
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
// environment, is used once, and is replaced; jobs of another shape get
// none; Close leaves nothing.
func TestWarmPool(t *testing.T) {
	r, image := testRunner(t)
	ctx := context.Background()
	pool, err := r.NewWarmPool(sleeper(image), 2)
	if err != nil {
		t.Fatal(err)
	}
	pool.Start()
	defer pool.Close(ctx)
	waitReady(t, pool, 2)
	if ids, _ := r.Containers(ctx); len(ids) != 2 {
		t.Fatalf("containers %v, want the pool's 2", ids)
	}

	// Jobs that do not fit get nothing, and take nothing.
	bigger := sleeper(image)
	bigger.Limits.Memory *= 2
	networked := sleeper(image)
	networked.Egress = &Egress{Policy: egress.Policy{Hosts: []string{"example.com"}}}
	launchNamed := sleeper(image)
	launchNamed.Args = []string{"/bin/sh", JobMount + "/" + LaunchFile}
	otherImage := sleeper(image + "/")
	for name, s := range map[string]Spec{"more memory": bigger, "network": networked, "script named like the launcher": launchNamed, "another image": otherImage} {
		if _, ok := pool.Take(s); ok {
			t.Errorf("%s: Take gave a sandbox", name)
		}
	}
	if pool.Ready() != 2 {
		t.Fatalf("ill-fitting takes changed the pool: %d ready", pool.Ready())
	}

	// The job's command is env itself: its stdout is its environment.
	job := sleeper(image)
	job.Name = "warm-job"
	job.Args = []string{"/usr/bin/env"}
	job.Env = []string{"PATH=/usr/bin:/bin", "QUOTED=it's a \"test\" $HOME `x`", "MULTI=a\nb"}
	job.Limits.Timeout = time.Minute
	sb, ok := pool.Take(job)
	if !ok {
		t.Fatal("Take found no warm sandbox")
	}
	defer sb.Release(ctx)
	out, err := sb.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Warm || out.ExitCode == nil || *out.ExitCode != 0 {
		t.Fatalf("warm %v exit %v stderr %q", out.Warm, out.ExitCode, out.Stderr.Tail)
	}
	got := strings.Split(strings.TrimSuffix(string(out.Stdout.Tail), "\n"), "\n")
	want := strings.Split(strings.Join(job.Env, "\n"), "\n")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("the job's environment:\n%q\nwant exactly:\n%q", got, want)
	}
	if _, err := sb.Run(ctx); err == nil {
		t.Fatal("a warm sandbox ran twice")
	}
	if err := sb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	hits, misses, failures := pool.Stats()
	if hits != 1 || misses != 0 || failures != 0 {
		t.Errorf("stats: %d hits, %d misses, %d failures", hits, misses, failures)
	}
	waitReady(t, pool, 2)

	// Arguments with spaces and quotes reach the script as they were; the
	// script arrived after the container was created.
	job.Args = []string{"/bin/sh", JobMount + "/my job.sh", "it's", "a b", ""}
	sb, ok = pool.Take(job)
	if !ok {
		t.Fatal("Take found no warm sandbox")
	}
	defer sb.Release(ctx)
	script := "printf '%s|' \"$0\" \"$#\" \"$@\" > " + OutputsMount + "/args.txt\n"
	if err := os.WriteFile(filepath.Join(sb.JobDir(), "my job.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err = sb.Run(ctx); err != nil || out.ExitCode == nil || *out.ExitCode != 0 {
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

	// Empty pool: a take misses.
	drain := []Sandbox{}
	waitReady(t, pool, 2)
	for range 2 {
		s, ok := pool.Take(job)
		if !ok {
			t.Fatal("Take found no warm sandbox")
		}
		drain = append(drain, s)
	}
	pool.mu.Lock()
	pool.closed = true // stop refills for the check
	pool.mu.Unlock()
	if _, ok := pool.Take(job); ok {
		t.Fatal("Take gave a sandbox from an empty pool")
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
	if m, _ := mountsUnder(filepath.Join(r.dir, "sandboxes")); len(m) != 0 {
		t.Fatalf("mounts left after Close: %v", m)
	}
}
