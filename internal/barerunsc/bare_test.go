package barerunsc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/internal/runsc"
	"github.com/sandq/sandq/internal/testenv"
)

// bareDirs makes a bare container's job, inputs and outputs directories
// with script as /mnt/job/job.sh.
func bareDirs(t *testing.T, script string) (job, inputs, outputs string) {
	t.Helper()
	dir := t.TempDir()
	job, inputs, outputs = filepath.Join(dir, "job"), filepath.Join(dir, "inputs"), filepath.Join(dir, "outputs")
	for _, d := range []string{job, inputs, outputs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(outputs, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inputs, "in.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(job, "job.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	return job, inputs, outputs
}

func TestBareRunnerRunsASandboxsContainer(t *testing.T) {
	testenv.NeedRunsc(t)
	img := testenv.NeedImage(t)
	rootfs, err := image.Path(img.Dir, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "bare")
	b, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			b.Close(ctx)
		}
	})
	spec := executor.Spec{
		Name: "bare-test", Image: rootfs, Env: []string{"PATH=/bin:/usr/bin"}, UID: 1000, GID: 1000,
		Limits: executor.Limits{Timeout: 10 * time.Minute, Memory: 128 << 20, Disk: 32 << 20, OutputBytes: 1 << 20, OutputFiles: 10, Pids: 64, LogBytes: 1 << 20, LogTail: 1024},
	}

	// The flags are a sandbox's without network.
	want := runsc.Flags(b.Root(), "systrap", "/o", spec.Limits.Disk, false, nil)
	if got := b.Flags("/o", spec.Limits.Disk); !slices.Equal(got, want) || !slices.Contains(got, "--network=none") {
		t.Errorf("flags %v, want %v", got, want)
	}

	// create, start, wait, delete: the job sees its mounts, runs as the job
	// user, and its exit status comes back (it sleeps, so runsc wait
	// reaches the sandbox before it ends).
	job, inputs, outputs := bareDirs(t, "cat /mnt/inputs/in.txt > /mnt/outputs/out.txt\nid -u >> /mnt/outputs/out.txt\nsleep 1\nexit 3\n")
	spec.Args = []string{"/bin/bash", "/mnt/job/job.sh"}
	res, err := b.Run(ctx, Container{ID: "bare-test-1", Spec: spec, InputsDir: inputs, JobDir: job, OutputsDir: outputs})
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusLost || res.ExitStatus != 3 {
		t.Errorf("exit status %d (lost %v), want 3", res.ExitStatus, res.StatusLost)
	}
	if !(res.Began.Before(res.Started) && res.Started.Before(res.Exited) && !res.Deleted.Before(res.Exited)) || res.Exited.Sub(res.Started) < time.Second {
		t.Errorf("times out of order: %+v", res)
	}
	if b, err := os.ReadFile(filepath.Join(outputs, "out.txt")); err != nil || string(b) != "from the host\n1000\n" {
		t.Errorf("output %q, %v", b, err)
	}

	// A job that ends at once: runsc wait may find the sandbox gone, and
	// the status then comes from its boot log, as a sandbox's does.
	for i := range 3 {
		job, inputs, outputs = bareDirs(t, "exit 7\n")
		res, err = b.Run(ctx, Container{ID: fmt.Sprintf("bare-fast-%d", i), Spec: spec, InputsDir: inputs, JobDir: job, OutputsDir: outputs})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitStatus != 7 || res.StatusLost {
			t.Errorf("fast job: exit status %d (wait lost it: %v, log did not say: %v), want 7", res.ExitStatus, res.WaitLost, res.StatusLost)
		}
	}

	// One runsc run.
	job, inputs, outputs = bareDirs(t, "echo one-shot > /mnt/outputs/out.txt\n")
	res, err = b.RunOneShot(ctx, Container{ID: "bare-test-2", Spec: spec, InputsDir: inputs, JobDir: job, OutputsDir: outputs})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitStatus != 0 || res.StatusLost {
		t.Errorf("one-shot exit status %d", res.ExitStatus)
	}
	if b, err := os.ReadFile(filepath.Join(outputs, "out.txt")); err != nil || string(b) != "one-shot\n" {
		t.Errorf("one-shot output %q, %v", b, err)
	}

	// A spec a sandbox would refuse is refused before anything is made.
	bad := spec
	bad.Limits.Memory = 0
	if _, err := b.Run(ctx, Container{ID: "bare-bad", Spec: bad, InputsDir: inputs, JobDir: job, OutputsDir: outputs}); err == nil || !strings.Contains(err.Error(), "limits must all be positive") {
		t.Errorf("a spec with no memory limit: %v, want the sandbox's refusal", err)
	}

	// Nothing is left: no container, no bundle, no cgroup, no directory.
	ids, err := runsc.List(ctx, "runsc", b.Root())
	if err != nil || len(ids) != 0 {
		t.Errorf("containers left: %v %v", ids, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "containers")); len(ents) != 0 {
		t.Errorf("container directories left: %v", ents)
	}
	cgroup := b.cfg.CgroupParent
	closed = true
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("runner directory left: %v", err)
	}
	v1, v2, _ := runsc.CgroupRoots()
	for _, root := range append([]string{v2}, v1["memory"], v1["pids"]) {
		if root == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, cgroup)); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left under %s", cgroup, root)
		}
	}
	if !strings.HasPrefix(cgroup, "/sandq/bare-") {
		t.Errorf("cgroup parent %q", cgroup)
	}
}
