package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// chainStep1 writes outputs of which *.csv matches two: sub/c.csv is one
// level down (a "*" does not cross "/") and notes.txt is not a CSV.
const chainStep1 = `
import os, random
os.makedirs('/mnt/outputs/sub')
rows = ''.join('%d,%d\n' % (i, random.randrange(10**9)) for i in range(2000))
open('/mnt/outputs/a.csv', 'w').write('n,value\n' + rows)
open('/mnt/outputs/b.csv', 'wb').write(bytes(range(256)) * 64)
open('/mnt/outputs/notes.txt', 'w').write('not a csv\n')
open('/mnt/outputs/sub/c.csv', 'w').write('deep\n')
print('step 1 done')
`

// chainStep2 lists what it was given and writes the sha256 and length of
// each file it reads, which the test compares with step 1's outputs.
const chainStep2 = `
import hashlib, json, os
seen = {}
for root, dirs, files in os.walk('/mnt/inputs'):
    for f in files:
        p = os.path.join(root, f)
        b = open(p, 'rb').read()
        seen[os.path.relpath(p, '/mnt/inputs')] = {'sha256': hashlib.sha256(b).hexdigest(), 'bytes': len(b)}
json.dump(seen, open('/mnt/outputs/read.json', 'w'), sort_keys=True)
print('read', ' '.join(sorted(seen)))
`

// sandqAsProducer runs the sandq binary with the producer's S3 user (the
// least a producer holds) and returns stdout, stderr and the exit code.
func sandqAsProducer(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(sandqBin(t), args...)
	cmd.Env = append(os.Environ(),
		"SANDQ_REDIS_ADDR="+env.stack.RedisAddr, "SANDQ_S3_ENDPOINT="+env.stack.MinioAddr, "SANDQ_S3_BUCKET="+env.producerS3.Bucket,
		"SANDQ_S3_ACCESS_KEY="+env.producerS3.AccessKey, "SANDQ_S3_SECRET_KEY="+env.producerS3.SecretKey)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.String(), stderr.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), 0
}

func outputByPath(t *testing.T, r *jobs.Result, p string) jobs.OutputDoc {
	t.Helper()
	for _, o := range r.Outputs {
		if o.Path == p {
			return o
		}
	}
	t.Fatalf("job %s has no output %s: %+v", r.ID, p, r.Outputs)
	return jobs.OutputDoc{}
}

// TestChainOfTwoJobs: step 2, enqueued by the CLI with --input-from
// STEP1:*.csv, reads step 1's two top-level CSVs from /mnt/inputs, byte
// for byte, and nothing else; its result records where each input came
// from, with step 1's sha256. A third step takes every output (no glob),
// subdirectories kept.
func TestChainOfTwoJobs(t *testing.T) {
	step1 := runJob(t, jobs.Submission{Script: file(t, "step1.py", chainStep1), Limits: jobs.LimitRequest{TimeoutSeconds: 60}})
	wantStatus(t, step1, jobs.StatusSucceeded)

	script := filepath.Join(t.TempDir(), "step2.py")
	if err := os.WriteFile(script, []byte(chainStep2), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := sandqAsProducer(t, "enqueue", script, "--input-from", step1.ID+":*.csv", "--timeout", "60s", "--wait", "--json")
	if code != 0 {
		t.Fatalf("enqueue --input-from: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var step2 jobs.Result
	if err := json.Unmarshal([]byte(out), &step2); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	wantStatus(t, &step2, jobs.StatusSucceeded)
	if got := strings.TrimSpace(step2.Stdout.Tail); got != "read a.csv b.csv" {
		t.Errorf("step 2 read %q, want exactly a.csv and b.csv", got)
	}
	var read map[string]struct {
		SHA256 string `json:"sha256"`
		Bytes  int64  `json:"bytes"`
	}
	if err := json.Unmarshal(download(t, outputByPath(t, &step2, "read.json").URL), &read); err != nil {
		t.Fatal(err)
	}
	if len(step2.Inputs) != 2 {
		t.Fatalf("step 2's result lists inputs %+v, want a.csv and b.csv", step2.Inputs)
	}
	for _, in := range step2.Inputs {
		o := outputByPath(t, step1, in.Name)
		if in.From == nil || in.From.Job != step1.ID || in.From.Path != o.Path {
			t.Errorf("input %s: from %+v, want job %s path %s", in.Name, in.From, step1.ID, o.Path)
		}
		if in.SHA256 != o.SHA256 || in.Size != o.Size {
			t.Errorf("input %s: sha256 %s size %d; step 1's output has %s, %d", in.Name, in.SHA256, in.Size, o.SHA256, o.Size)
		}
		// What the job read is what step 1 wrote.
		if r := read[in.Name]; r.SHA256 != o.SHA256 || r.Bytes != o.Size {
			t.Errorf("step 2 read %s as %+v; step 1 wrote sha256 %s, %d bytes", in.Name, r, o.SHA256, o.Size)
		}
		sum := sha256.Sum256(download(t, o.URL))
		if hex.EncodeToString(sum[:]) != o.SHA256 {
			t.Errorf("step 1's %s by its link does not hash to its result's sha256", o.Path)
		}
	}

	// Every output, kept in its directory, beside an uploaded input.
	step3 := runJob(t, jobs.Submission{
		Script: file(t, "step3.py", chainStep2), Inputs: []jobs.File{file(t, "own.txt", "uploaded")},
		InputsFrom: []jobs.InputFrom{{Job: step1.ID}}, Limits: jobs.LimitRequest{TimeoutSeconds: 60},
	})
	wantStatus(t, step3, jobs.StatusSucceeded)
	if got := strings.TrimSpace(step3.Stdout.Tail); got != "read a.csv b.csv notes.txt own.txt sub/c.csv" {
		t.Errorf("step 3 read %q", got)
	}
	var from []string
	for _, in := range step3.Inputs {
		if in.From != nil {
			from = append(from, in.From.Path)
		} else if in.Name != "own.txt" {
			t.Errorf("input %+v has no origin", in)
		}
	}
	slices.Sort(from)
	if strings.Join(from, " ") != "a.csv b.csv notes.txt sub/c.csv" {
		t.Errorf("step 3's inputs from step 1: %v", from)
	}
}

// idleQueueJob queues a job on a queue no worker serves: it stays pending
// until the test ends, when it is cancelled.
func idleQueueJob(t *testing.T) string {
	t.Helper()
	enq := submit(t, jobs.Submission{Script: file(t, "never.py", "print(1)"), Queue: "idle-" + jobs.NewJobID()[:8]})
	t.Cleanup(func() {
		if _, err := env.client.Cancel(context.Background(), enq.ID); err != nil {
			t.Errorf("cancel the idle job: %v", err)
		}
	})
	return enq.ID
}

// TestInputFromRefusalsLeaveNothing: each way an --input-from is refused
// names what is wrong, and leaves no task and no object behind, also when
// the refusal comes after outputs were copied (a name collision with an
// uploaded input, the inputs' count or bytes over their caps).
func TestInputFromRefusalsLeaveNothing(t *testing.T) {
	step1 := runJob(t, jobs.Submission{Script: file(t, "step1.py", chainStep1), Limits: jobs.LimitRequest{TimeoutSeconds: 60}})
	wantStatus(t, step1, jobs.StatusSucceeded)
	failed := runJob(t, jobs.Submission{Script: file(t, "fail.sh", "echo x > /mnt/outputs/x.csv; exit 3")})
	wantStatus(t, failed, jobs.StatusFailed)
	pending := idleQueueJob(t)

	// Clients with small caps: two inputs at most, or 20 KiB in all
	// (a.csv is about 28 KB, b.csv 16 KiB).
	capped := func(f func(*jobs.Config)) *jobs.Client {
		cfg := env.cfg
		cfg.Storage = env.producerS3
		f(&cfg)
		store, err := storage.New(cfg.Storage)
		if err != nil {
			t.Fatal(err)
		}
		c, err := jobs.NewClient(cfg, store, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	twoInputs := capped(func(c *jobs.Config) { c.MaxInputs = 2 })
	fewBytes := capped(func(c *jobs.Config) { c.MaxInputsTotal = 20 << 10 })

	objBefore, keysBefore := snapshot(t)
	ok := file(t, "ok.py", "print(1)")
	missing := jobs.NewJobID()
	cases := []struct {
		name   string
		client *jobs.Client
		sub    jobs.Submission
		check  func(error) bool
		says   []string
	}{
		{"not finished", env.client, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: pending}}},
			func(err error) bool { return errors.Is(err, jobs.ErrJobNotFinished) }, []string{pending, "not finished", "pending"}},
		{"no such job", env.client, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: missing}}},
			func(err error) bool { return errors.Is(err, jobs.ErrJobNotFound) }, []string{missing}},
		{"failed job", env.client, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: failed.ID}}},
			func(err error) bool { return errors.Is(err, jobs.ErrJobNotSucceeded) }, []string{failed.ID, "ended failed (exit code 3)"}},
		{"glob matching nothing", env.client, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*.xlsx"}}},
			fieldIs("inputs_from"), []string{`glob "*.xlsx" matches none of the 4 outputs of job ` + step1.ID, `"a.csv"`}},
		{"a glob that would cross /", env.client, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*/c.txt"}}},
			fieldIs("inputs_from"), []string{"matches none"}},
		{"collision with an uploaded input", env.client, jobs.Submission{Script: ok, Inputs: []jobs.File{file(t, "a.csv", "mine")}, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*.csv"}}},
			fieldIs("inputs"), []string{`"a.csv" and "a.csv" collide`}},
		{"over the inputs' count", twoInputs, jobs.Submission{Script: ok, Inputs: []jobs.File{file(t, "own.txt", "x")}, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*.csv"}}},
			fieldIs("inputs"), []string{"3 inputs is over the maximum of 2"}},
		{"over the count before the jobs after it are read", twoInputs, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*.csv"}, {Job: step1.ID, Glob: "notes.txt"}, {Job: missing}}},
			fieldIs("inputs"), []string{"3 inputs is over the maximum of 2"}},
		{"over the inputs' bytes", fewBytes, jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "*.csv"}}},
			func(err error) bool { var tl *jobs.TooLargeError; return errors.As(err, &tl) }, []string{"over the maximum of 20480"}},
		{"uploads over the bytes the copies left", fewBytes, jobs.Submission{Script: ok, Inputs: []jobs.File{file(t, "big.bin", strings.Repeat("x", 10<<10))}, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "b.csv"}}},
			func(err error) bool { var tl *jobs.TooLargeError; return errors.As(err, &tl) }, []string{"over the maximum of 20480"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			enq, err := c.client.Enqueue(context.Background(), c.sub)
			if err == nil {
				t.Fatalf("queued %s, want a refusal", enq.ID)
			}
			if !c.check(err) {
				t.Errorf("error %v (%T) is not the refusal wanted", err, err)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
	// The names of two jobs' outputs collide like any.
	again := runJob(t, jobs.Submission{Script: file(t, "again.sh", "echo again > /mnt/outputs/a.csv")})
	wantStatus(t, again, jobs.StatusSucceeded)
	_, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: ok, InputsFrom: []jobs.InputFrom{{Job: step1.ID, Glob: "a.csv"}, {Job: again.ID}}})
	if !fieldIs("inputs")(err) || !strings.Contains(err.Error(), "collide") {
		t.Errorf("two jobs' a.csv: %v, want a collision", err)
	}
	objAfter, keysAfter := snapshot(t)
	// again's own files are new; nothing else may be.
	var extra []string
	for _, o := range objAfter {
		if !slices.Contains(objBefore, o) && !strings.HasPrefix(o, jobs.JobPrefix(again.ID)) {
			extra = append(extra, o)
		}
	}
	if len(extra) > 0 {
		t.Errorf("refused submissions left objects: %v", extra)
	}
	for _, k := range keysAfter {
		if strings.Contains(k, ":t:") && !contains(keysBefore, k) && !strings.HasSuffix(k, ":"+again.ID) {
			t.Errorf("new task key in Redis: %s", k)
		}
	}
}

func fieldIs(field string) func(error) bool {
	return func(err error) bool {
		var fe *jobs.FieldError
		return errors.As(err, &fe) && fe.Field == field
	}
}

// TestInputFromThroughTheAPI: a tenant chains its own jobs with
// "inputs_from"; another tenant naming the job is refused 404 in the same
// words as for a job that does not exist, and so is a direct producer (a
// job of no tenant); a job not yet finished is refused 409 naming it and
// its state; none of the refusals leaves an object.
func TestInputFromThroughTheAPI(t *testing.T) {
	producerStore, err := storage.New(env.producerS3)
	if err != nil {
		t.Fatal(err)
	}
	url, toks := sandqtest.API(t, env.cfg, producerStore, nil, map[string]api.Tenant{
		"alpha": {Queues: []string{"default", "other"}}, "bravo": {Queues: []string{"default", "other"}},
	})
	post := func(tok, spec, script string, inputs map[string]string) (int, api.Job, api.Error) {
		t.Helper()
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		mw.WriteField("spec", spec)
		w, _ := mw.CreateFormFile("script", "s.sh")
		io.WriteString(w, script)
		for name, content := range inputs {
			w, _ := mw.CreateFormFile("input", name)
			io.WriteString(w, content)
		}
		mw.Close()
		req, _ := http.NewRequest("POST", url+"/v1/jobs", &body)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var j api.Job
		var e struct{ Error api.Error }
		if resp.StatusCode < 300 {
			if err := json.Unmarshal(b, &j); err != nil || j.JobStatus == nil {
				t.Fatalf("submit: %d %s", resp.StatusCode, b)
			}
		} else if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("submit: %d %s", resp.StatusCode, b)
		}
		return resp.StatusCode, j, e.Error
	}
	spec := func(from ...string) string {
		var f []jobs.InputFrom
		for _, s := range from {
			x, err := jobs.ParseInputFrom(s)
			if err != nil {
				t.Fatal(err)
			}
			f = append(f, x)
		}
		b, _ := json.Marshal(map[string]any{"inputs_from": f, "limits": map[string]any{"timeout_seconds": 60}})
		return string(b)
	}
	wait := func(id string) *jobs.Result {
		t.Helper()
		r := waitResult(t, id, 3*time.Minute)
		wantStatus(t, r, jobs.StatusSucceeded)
		return r
	}

	code, j1, e := post(toks["alpha"], spec(), "printf 'x,y\\n1,2\\n' > /mnt/outputs/t.csv", nil)
	if code != 201 {
		t.Fatalf("alpha's first job: %d %+v", code, e)
	}
	wait(j1.ID)
	code, j2, e := post(toks["alpha"], spec(j1.ID+":*.csv"), "cat /mnt/inputs/t.csv", nil)
	if code != 201 {
		t.Fatalf("alpha chains its job: %d %+v", code, e)
	}
	r2 := wait(j2.ID)
	if r2.Stdout.Tail != "x,y\n1,2\n" || len(r2.Inputs) != 1 || r2.Inputs[0].From == nil || r2.Inputs[0].From.Job != j1.ID {
		t.Errorf("alpha's second job: stdout %q inputs %+v", r2.Stdout.Tail, r2.Inputs)
	}

	objBefore, keysBefore := snapshot(t)
	code, _, eBravo := post(toks["bravo"], spec(j1.ID), "true", nil)
	if code != 404 || eBravo.Code != "not_found" || eBravo.Field != "inputs_from" {
		t.Errorf("bravo names alpha's job: %d %+v, want 404 not_found", code, eBravo)
	}
	missing := jobs.NewJobID()
	_, _, eMissing := post(toks["bravo"], spec(missing), "true", nil)
	if strings.ReplaceAll(eMissing.Message, missing, "ID") != strings.ReplaceAll(eBravo.Message, j1.ID, "ID") {
		t.Errorf("another tenant's job is refused as %q, a job that does not exist as %q: they must read alike", eBravo.Message, eMissing.Message)
	}
	if _, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "ok.py", "print(1)"), InputsFrom: []jobs.InputFrom{{Job: j1.ID}}}); !errors.Is(err, jobs.ErrJobNotFound) {
		t.Errorf("a direct producer names alpha's job: %v, want not found", err)
	}
	// A collision with an uploaded input comes after the copy: it goes.
	code, _, e = post(toks["alpha"], spec(j1.ID), "true", map[string]string{"t.csv": "mine"})
	if code != 400 || e.Field != "inputs" || !strings.Contains(e.Message, "collide") {
		t.Errorf("alpha uploads a name an output takes: %d %+v", code, e)
	}

	// A job not yet finished: one that sleeps.
	code, sleeper, e := post(toks["alpha"], spec(), "sleep 50", nil)
	if code != 201 {
		t.Fatalf("sleeper: %d %+v", code, e)
	}
	t.Cleanup(func() { env.client.Cancel(context.Background(), sleeper.ID) })
	code, _, e = post(toks["alpha"], spec(sleeper.ID), "true", nil)
	if code != 409 || e.Code != "job_not_finished" || !strings.Contains(e.Message, "job "+sleeper.ID+" is not finished (it is ") {
		t.Errorf("a job not finished: %d %+v, want 409 job_not_finished naming it and its state", code, e)
	}
	// Cancelled before it ran, it is gone; running, it ends canceled.
	if out, err := env.client.Cancel(context.Background(), sleeper.ID); err != nil {
		t.Errorf("cancel the sleeper: %v", err)
	} else if out != jobs.CancelRemoved {
		waitResult(t, sleeper.ID, time.Minute)
	}

	objAfter, keysAfter := snapshot(t)
	for _, o := range objAfter {
		if !slices.Contains(objBefore, o) && !strings.HasPrefix(o, jobs.JobPrefix(sleeper.ID)) {
			t.Errorf("a refused submission left %s", o)
		}
	}
	for _, k := range keysAfter {
		if strings.Contains(k, ":t:") && !contains(keysBefore, k) && !strings.HasSuffix(k, ":"+sleeper.ID) {
			t.Errorf("new task key in Redis: %s", k)
		}
	}
}

// TestCopiedInputIsCheckedBySHA256: a copied input carries its output's
// sha256, and the worker checks the file against it: a copy changed in the
// store before the job runs ends the job in error, never run on the bytes.
func TestCopiedInputIsCheckedBySHA256(t *testing.T) {
	ctx := context.Background()
	step1 := runJob(t, jobs.Submission{Script: file(t, "w.sh", "printf original > /mnt/outputs/out.csv")})
	wantStatus(t, step1, jobs.StatusSucceeded)
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: env.stack.RedisAddr})
	defer insp.Close()
	if err := insp.PauseQueue("other"); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			insp.UnpauseQueue("other")
		}
	}()
	enq := submit(t, jobs.Submission{Script: file(t, "r.sh", "cat /mnt/inputs/out.csv"), Queue: "other", InputsFrom: []jobs.InputFrom{{Job: step1.ID}}})
	keys, err := env.store.List(ctx, jobs.JobPrefix(enq.ID))
	if err != nil {
		t.Fatal(err)
	}
	var copied string
	for _, k := range keys {
		if strings.HasSuffix(k, "/inputs/out.csv") {
			copied = k
		}
	}
	if copied == "" {
		t.Fatalf("no copied input among %v", keys)
	}
	// Same size, other bytes.
	if _, err := env.store.Put(ctx, copied, strings.NewReader("tampered"), 8, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := insp.UnpauseQueue("other"); err != nil {
		t.Fatal(err)
	}
	paused = false
	r := waitResult(t, enq.ID, 2*time.Minute)
	wantStatus(t, r, jobs.StatusError)
	if !strings.Contains(r.Reason, "input out.csv: sha256") || !strings.Contains(r.Reason, step1.Outputs[0].SHA256) {
		t.Errorf("reason %q, want the sha256 mismatch of out.csv against step 1's %s", r.Reason, step1.Outputs[0].SHA256)
	}
	if r.Stdout != nil && strings.Contains(r.Stdout.Tail, "tampered") {
		t.Errorf("the job ran on the changed bytes: %q", r.Stdout.Tail)
	}
}
