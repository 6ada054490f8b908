package chaos

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/jobs"
)

// waitRetried waits until a job has failed an attempt for a system reason
// and says why; it reports whether the job was seen in state retry.
func waitRetried(t *testing.T, insp *asynq.Inspector, q, id string, within time.Duration) (*asynq.TaskInfo, bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	sawRetry := false
	for {
		info, err := insp.GetTaskInfo(q, id)
		if err == nil {
			sawRetry = sawRetry || info.State == asynq.TaskStateRetry
			if info.Retried >= 1 && info.LastErr != "" {
				return info, sawRetry
			}
			if info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived {
				t.Fatalf("job %s ended (%s) without a failed attempt", id, info.State)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s had no failed attempt after %s (%v %v)", id, within, info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMinioOutage stops MinIO (a) before a worker downloads a job's input
// and (b) while a worker uploads a job's outputs. Each attempt fails for a
// system reason, recorded as the job's last error while it waits in state
// retry; once MinIO is back the job succeeds, and its result presents only
// the complete output set of the attempt that succeeded.
func TestMinioOutage(t *testing.T) {
	sc := newScenario(t, 5, "MinIO unavailable at download and at upload")
	const q = "chaos-minio"
	c := producer(t, q)
	insp := inspector(t)
	a := sc.worker("minio-a", workerOpts{queues: q})

	// (a) The input cannot be downloaded.
	data := make([]byte, 1<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	if err := insp.PauseQueue(q); err != nil {
		t.Fatal(err)
	}
	in := jobs.File{Name: "data.bin", Size: int64(len(data)), Open: script("", string(data)).Open}
	down := sc.submit(c, jobs.Submission{
		Script: script("sum.sh", "sha256sum < $INPUT_DIR/data.bin | cut -d' ' -f1 > $OUTPUT_DIR/sum\n"),
		Inputs: []jobs.File{in}, Webhook: env.receiver.URL(), Limits: small,
	})
	if err := env.stack.StopService("minio", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := insp.UnpauseQueue(q); err != nil {
		t.Fatal(err)
	}
	info, sawRetry := waitRetried(t, insp, q, down.id, 3*time.Minute)
	if !strings.Contains(info.LastErr, "fetch") {
		t.Errorf("last error %q does not say the download failed", info.LastErr)
	}
	sc.figure("download with MinIO stopped: attempt failed after %s, job %s (seen in state retry: %v), last error %q",
		time.Since(stopped).Round(100*time.Millisecond), info.State, sawRetry, shorten(info.LastErr, 120))
	if err := env.stack.StartService(context.Background(), "minio"); err != nil {
		t.Fatal(err)
	}
	r := sc.result(down, 5*time.Minute)
	if r.Status != jobs.StatusSucceeded || r.Attempt < 2 || len(r.Outputs) != 1 ||
		strings.TrimSpace(string(download(t, r.Outputs[0].URL))) != hex.EncodeToString(sum[:]) {
		t.Errorf("after MinIO came back: %s (%s) attempt %d outputs %+v", r.Status, r.Reason, r.Attempt, r.Outputs)
	}
	sc.figure("MinIO back: the job succeeded on attempt %d with its input's sha256 intact", r.Attempt)

	// (b) The outputs cannot all be uploaded: MinIO dies while the worker
	// uploads them one by one.
	const files = 2000
	up := sc.submit(c, jobs.Submission{
		Script:  script("many.sh", fmt.Sprintf("for i in $(seq 1 %d); do echo $i > $OUTPUT_DIR/f$i; done; echo written\n", files)),
		Webhook: env.receiver.URL(), Limits: jobs.LimitRequest{TimeoutSeconds: 180, MemoryBytes: 256 << 20, OutputFiles: files + 10},
	})
	// The uploads start when the sandbox is gone.
	waitContainers(t, a.runscRoot(), 1, 2*time.Minute)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		list, err := containers(a.runscRoot())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job's sandbox did not end")
		}
	}
	time.Sleep(300 * time.Millisecond)
	if err := env.stack.StopService("minio", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	info, sawRetry = waitRetried(t, insp, q, up.id, 3*time.Minute)
	sc.figure("upload with MinIO killed mid-way: job %s (seen in state retry: %v), last error %q",
		info.State, sawRetry, shorten(info.LastErr, 120))
	if err := env.stack.StartService(context.Background(), "minio"); err != nil {
		t.Fatal(err)
	}
	r = sc.result(up, 5*time.Minute)
	if r.Status != jobs.StatusSucceeded || r.Attempt < 2 {
		t.Fatalf("after MinIO came back: %s (%s) attempt %d", r.Status, r.Reason, r.Attempt)
	}
	prefix := fmt.Sprintf("%srun-%d-", jobs.JobPrefix(up.id), r.Attempt)
	bad := 0
	for _, o := range r.Outputs {
		if !strings.HasPrefix(o.Key, prefix) {
			bad++
		}
	}
	if len(r.Outputs) != files || bad > 0 {
		t.Errorf("the result presents %d outputs (%d outside its attempt's prefix %s), want all %d of the attempt that succeeded", len(r.Outputs), bad, prefix, files)
	}
	for _, o := range r.Outputs[:3] {
		if got := strings.TrimSpace(string(download(t, o.URL))); "f"+got != o.Path {
			t.Errorf("%s holds %q", o.Path, got)
		}
	}
	keys, err := env.store.List(context.Background(), jobs.JobPrefix(up.id))
	if err != nil {
		t.Fatal(err)
	}
	stale := 0
	for _, k := range keys {
		if strings.Contains(k, "/run-") && !strings.HasPrefix(k, prefix) {
			stale++
		}
	}
	sc.figure("MinIO back: the job succeeded on attempt %d; its result lists all %d outputs, all of that attempt; %d objects of the failed attempt's partial upload stay unreferenced (the bucket's expiry rule removes them)",
		r.Attempt, len(r.Outputs), stale)
	sc.finish(3 * time.Minute)
}
