package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/barerunsc"
	"github.com/sandq/sandq/jobs"
)

// variant is one form of the trivial job: a script that reads its one
// 1 KiB input and writes one small output file.
type variant struct {
	name    string
	runtime string
	script  string // file name
	body    string
	// interp is the argv prefix sandq gives the runtime in the image (see
	// the README's runtimes table); bare runs use the same.
	interp []string
	// want is the output file's expected content.
	want string
	// pandas variants run on Options.PandasImage, which has pandas and
	// matplotlib (the default image does not); the others on
	// Options.Image.
	pandas bool
	// noProcess says why the variant has no bare process floor (the
	// host's interpreter lacks its modules); empty when it has one.
	noProcess string
	// restoreTarget is the bound on the restored serial p50 over
	// the cold one (0: none); throughputTarget the bound on the best
	// restored drain over the best cold one (0: none).
	restoreTarget, throughputTarget float64
}

const (
	inputName  = "input.txt"
	outputName = "result.txt"
)

// input is the trivial job's input: 16 lines of 64 bytes.
var input = strings.Repeat(strings.Repeat("x", 63)+"\n", 16)

var variants = map[string]variant{
	VariantShell: {
		name: VariantShell, runtime: jobs.RuntimeShell, script: "job.sh", interp: []string{"/bin/bash"},
		body: `set -eu
lines=0
while IFS= read -r _; do lines=$((lines+1)); done < "$INPUT_DIR/input.txt"
printf 'lines=%d\n' "$lines" > "$OUTPUT_DIR/result.txt"
`,
		want: "lines=16\n",
	},
	VariantPython: {
		name: VariantPython, runtime: jobs.RuntimePython, script: "job.py", interp: []string{"/usr/bin/python3"},
		body: `import os
with open(os.path.join(os.environ["INPUT_DIR"], "input.txt"), "rb") as f:
    data = f.read()
with open(os.path.join(os.environ["OUTPUT_DIR"], "result.txt"), "w") as f:
    f.write("bytes=%d lines=%d\n" % (len(data), data.count(b"\n")))
`,
		want:          "bytes=1024 lines=16\n",
		restoreTarget: 1,
	},
	VariantPythonPandas: {
		name: VariantPythonPandas, runtime: jobs.RuntimePython, script: "job.py", interp: []string{"/usr/bin/python3"},
		body: `import os
import pandas, matplotlib
with open(os.path.join(os.environ["INPUT_DIR"], "input.txt"), "rb") as f:
    data = f.read()
with open(os.path.join(os.environ["OUTPUT_DIR"], "result.txt"), "w") as f:
    f.write("bytes=%d lines=%d modules=%s,%s\n" % (len(data), data.count(b"\n"), pandas.__name__, matplotlib.__name__))
`,
		want:      "bytes=1024 lines=16 modules=pandas,matplotlib\n",
		pandas:    true,
		noProcess: "the host's python has no pandas or matplotlib: the floor is bare runsc on the image",
		// The snapshot targets: restored at most 1/5 of cold, and
		// at least 3x the cold drain's best throughput.
		restoreTarget: 0.2, throughputTarget: 3,
	},
}

// imageName is the image v runs on.
func (e *env) imageName(v variant) string {
	if v.pandas {
		return e.o.PandasImage
	}
	return e.o.Image
}

// imagePath is the root filesystem of the image v runs on.
func (e *env) imagePath(v variant) string {
	return filepath.Join(e.o.ImageDir, e.imageName(v), "rootfs")
}

// restorable reports whether v's jobs can start from a snapshot template:
// the worker makes templates for python jobs only.
func (v variant) restorable() bool { return v.runtime == jobs.RuntimePython }

// sleeper is the job the memory probe keeps running: it writes its output,
// then sleeps, so that several run at once.
var sleeper = variant{
	name: "sleeper", runtime: jobs.RuntimeShell, script: "sleep.sh", interp: []string{"/bin/bash"},
	body: "echo started > \"$OUTPUT_DIR/result.txt\"\nsleep 6\n", want: "started\n",
}

// submission is the variant as a sandq job.
func (v variant) submission(queue, webhookURL string) jobs.Submission {
	return jobs.Submission{
		Script:  memFile(v.script, v.body),
		Inputs:  []jobs.File{memFile(inputName, input)},
		Runtime: v.runtime,
		Queue:   queue,
		Webhook: webhookURL,
	}
}

func memFile(name, body string) jobs.File {
	return jobs.File{Name: name, Size: int64(len(body)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	}}
}

// checkResult refuses a sandq result that is not the trivial job's success.
func (v variant) checkResult(r *jobs.Result) error {
	if r == nil {
		return fmt.Errorf("no result")
	}
	if r.Status != jobs.StatusSucceeded {
		return fmt.Errorf("job %s ended %s (%s)", r.ID, r.Status, r.Reason)
	}
	if len(r.Outputs) != 1 || r.Outputs[0].Path != outputName || r.Outputs[0].Size != int64(len(v.want)) {
		return fmt.Errorf("job %s: outputs %+v, want one %s of %d bytes", r.ID, r.Outputs, outputName, len(v.want))
	}
	if r.Timings == nil {
		return fmt.Errorf("job %s: result has no timings", r.ID)
	}
	return nil
}

// sandboxEnv is the environment sandq gives a job that sets no variables
// (see the README's "Inside the sandbox").
func sandboxEnv() []string {
	return []string{
		"HOME=" + executor.WorkDir, "INPUT_DIR=" + executor.InputsMount, "LANG=C.UTF-8",
		"OUTPUT_DIR=" + executor.OutputsMount, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
}

// jobDirs is one bare run's host directories: the script, the input, the
// outputs (writable by the job user) and the logs.
type jobDirs struct {
	root, job, inputs, outputs string
}

func (e *env) makeJobDirs(v variant) (*jobDirs, error) {
	root, err := os.MkdirTemp(filepath.Join(e.dir, "bare"), "job-")
	if err != nil {
		return nil, err
	}
	d := &jobDirs{root: root, job: filepath.Join(root, "job"), inputs: filepath.Join(root, "inputs"), outputs: filepath.Join(root, "outputs")}
	for _, p := range []string{d.job, d.inputs, d.outputs} {
		if err := os.Mkdir(p, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(d.job, v.script), []byte(v.body), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(d.inputs, inputName), []byte(input), 0o644); err != nil {
		return nil, err
	}
	uid, gid := int(e.cfg.Worker.UID), int(e.cfg.Worker.GID)
	if err := os.Chown(d.outputs, uid, gid); err != nil {
		return nil, err
	}
	return d, nil
}

// check reads the output the job wrote.
func (d *jobDirs) check(v variant) error {
	b, err := os.ReadFile(filepath.Join(d.outputs, outputName))
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	if string(b) != v.want {
		return fmt.Errorf("output %q, want %q", b, v.want)
	}
	return nil
}

func (d *jobDirs) remove() error { return os.RemoveAll(d.root) }

// runProcess runs the trivial job as a bare process on the host: the same
// interpreter (the host's), the script and input in a temporary directory,
// the same environment with the directories pointing there.
func (e *env) runProcess(ctx context.Context, v variant) (time.Duration, error) {
	began := time.Now()
	d, err := e.makeJobDirs(v)
	if err != nil {
		return 0, err
	}
	defer d.remove()
	cmd := exec.CommandContext(ctx, v.interp[0], append(v.interp[1:], filepath.Join(d.job, v.script))...)
	cmd.Dir = d.root
	cmd.Env = []string{"HOME=" + d.root, "INPUT_DIR=" + d.inputs, "OUTPUT_DIR=" + d.outputs, "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("bare process: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := d.check(v); err != nil {
		return 0, err
	}
	return time.Since(began), nil
}

// bareRun is one bare runsc container's times.
type bareRun struct {
	// began: set-up began; created: runsc start returned; exited: runsc
	// wait returned; deleted: runsc delete returned; done: the job's
	// directories were removed.
	began, created, exited, deleted, done time.Time
	// waitLost: runsc wait could not tell the exit status and it was read
	// from the boot log, as a sandbox does (see barerunsc.Result); the
	// output is checked either way.
	waitLost bool
}

// runBare runs the trivial job in a bare runsc container (the sandbox's
// OCI spec and runsc flags and calls, nothing else); oneShot uses a single
// `runsc run` instead of create, start, wait and delete.
func (e *env) runBare(ctx context.Context, v variant, oneShot bool) (*bareRun, error) {
	began := time.Now()
	d, err := e.makeJobDirs(v)
	if err != nil {
		return nil, err
	}
	defer d.remove()
	logs, err := os.Create(filepath.Join(d.root, "output.log"))
	if err != nil {
		return nil, err
	}
	defer logs.Close()
	l := e.cfg.DefaultLimits
	w := e.cfg.Worker
	c := barerunsc.Container{
		ID: fmt.Sprintf("bench-%d", e.next()),
		Spec: executor.Spec{
			Name: "bench", Image: e.imagePath(v), Args: append(append([]string(nil), v.interp...), path.Join(executor.JobMount, v.script)),
			Env: sandboxEnv(), UID: w.UID, GID: w.GID,
			Limits: executor.Limits{
				Timeout: l.Timeout, Memory: l.Memory, Disk: l.Disk, OutputBytes: l.OutputBytes, OutputFiles: l.OutputFiles,
				Pids: w.Pids, LogBytes: w.LogBytes, LogTail: w.LogTail,
			},
		},
		InputsDir: d.inputs, JobDir: d.job, OutputsDir: d.outputs, Stdout: logs, Stderr: logs,
	}
	var res *barerunsc.Result
	if oneShot {
		res, err = e.bare.RunOneShot(ctx, c)
	} else {
		res, err = e.bare.Run(ctx, c)
	}
	if err != nil {
		return nil, err
	}
	if res.ExitStatus != 0 && !res.StatusLost {
		out, _ := os.ReadFile(logs.Name())
		return nil, fmt.Errorf("bare container exited %d: %s", res.ExitStatus, strings.TrimSpace(string(out)))
	}
	if err := d.check(v); err != nil {
		return nil, err
	}
	logs.Close()
	if err := d.remove(); err != nil {
		return nil, err
	}
	return &bareRun{began: began, created: res.Started, exited: res.Exited, deleted: res.Deleted, done: time.Now(), waitLost: res.WaitLost}, nil
}
