package redismodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// Sizes of the failover test's load.
const (
	failoverSubmitters = 2
	submitEvery        = time.Second      // each submitter's pace; GETs fill the time between
	loadBefore         = 3 * time.Second  // load before the primary is killed
	loadAfter          = 6 * time.Second  // load after the failover
	submitRetryFor     = 60 * time.Second // a submission is retried (same key) this long
	drainWithin        = 2 * time.Minute
)

// ledger is what the load saw: accepted jobs by marker, and every answer
// that was neither a correct 2xx nor a 503.
type ledger struct {
	mu       sync.Mutex
	accepted map[string]string // job ID -> marker its script prints
	wrong    []string
	answers  map[int]int // status -> count
}

func (l *ledger) answer(status int) {
	l.mu.Lock()
	l.answers[status]++
	l.mu.Unlock()
}

func (l *ledger) fail(format string, args ...any) {
	l.mu.Lock()
	l.wrong = append(l.wrong, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *ledger) ids() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]string, len(l.accepted))
	for k, v := range l.accepted {
		out[k] = v
	}
	return out
}

// statusOf is the HTTP status of an API client error: 0 for none, -1
// for a transport error (the server not answering at all).
func statusOf(err error) int {
	var se *api.StatusError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &se):
		return se.Status
	}
	return -1
}

// TestSentinelFailoverRideThrough runs `sandq serve` and `sandq worker`
// as processes on a Sentinel set (primary, two replicas, three
// sentinels), named by a redis+sentinel:// URL with --redis-wait-replicas
// 1. Under a load of submissions (each retried with its idempotency key
// until accepted) and GETs of accepted jobs, the primary is SIGKILLed.
// Every API answer during the switch is a correct 2xx or a 503, never a
// 404, a 500 or another job; every accepted job ends succeeded with its
// own output: none is lost.
func TestSentinelFailoverRideThrough(t *testing.T) {
	testenv.NeedRunsc(t)
	testenv.NeedImage(t)
	bin, err := env.suite.Sandq()
	if err != nil {
		t.Fatal(err)
	}
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 2, AppendOnly: true})
	dir := t.TempDir()
	redisURL := "redis+sentinel://" + strings.Join(set.SentinelAddrs(), ",") + "/" + set.MasterName
	procEnv := append(os.Environ(), "SANDQ_REDIS_URL="+redisURL, "SANDQ_REDIS_WAIT_REPLICAS=1", "SANDQ_REDIS_WAIT_TIMEOUT=2s",
		"SANDQ_S3_ENDPOINT="+env.s3.Endpoint, "SANDQ_S3_ACCESS_KEY="+rootKey, "SANDQ_S3_SECRET_KEY="+rootSecret, "SANDQ_S3_BUCKET="+bucket,
		"SANDQ_LOG_LEVEL=info")
	token := writeAuth(t, filepath.Join(dir, "auth.json"))
	listen := testenv.FreeAddr(t)
	serve := startProc(t, bin, procEnv, filepath.Join(dir, "serve.log"), "serve", "--listen", listen, "--auth-config", filepath.Join(dir, "auth.json"))
	worker := startProc(t, bin, procEnv, filepath.Join(dir, "worker.log"), "worker",
		"--state-dir", filepath.Join(env.suite.Dir, "state-failover"), "--queues", "default=1", "--concurrency", "4",
		"--metrics-addr", "", "--image-dir", env.suite.Image.Dir, "--image", env.suite.Image.Name, "--shutdown-grace", "5s")
	if _, err := worker.WaitOutput("worker started", time.Minute); err != nil {
		t.Fatalf("worker: %v", err)
	}
	waitHealthy(t, "http://"+listen)
	client, err := api.NewClient("http://"+listen, token)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	l := &ledger{accepted: map[string]string{}, answers: map[int]int{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for s := range failoverSubmitters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				next := time.Now().Add(submitEvery)
				submitUntilAccepted(client, l, fmt.Sprintf("s%d-%d", s, n))
				for ctx.Err() == nil && time.Now().Before(next) {
					getSome(ctx, client, l)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(loadBefore)
	old := set.KillPrimary(t)
	killedAt := time.Now()
	fctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	primary, err := set.WaitFailover(fctx, old)
	cancel()
	if err != nil {
		stop()
		wg.Wait()
		t.Fatal(err)
	}
	t.Logf("failover %s -> %s in %s", old, primary, time.Since(killedAt).Round(time.Millisecond))
	time.Sleep(loadAfter)
	stop()
	wg.Wait()

	accepted := l.ids()
	t.Logf("answers by status (-1: no answer): %v; %d jobs accepted", l.answers, len(accepted))
	if len(l.wrong) > 0 {
		t.Errorf("%d wrong answers during the failover, first ones:\n%s", len(l.wrong), strings.Join(l.wrong[:min(len(l.wrong), 10)], "\n"))
	}
	if len(accepted) < failoverSubmitters*2 {
		t.Fatalf("only %d jobs accepted: the load did not run", len(accepted))
	}
	drainStart := time.Now()
	checkAllDone(t, client, accepted)
	t.Logf("all accepted jobs done %s after the load ended", time.Since(drainStart).Round(time.Millisecond))
	if os.Getenv("SANDQ_TEST_LOG") != "" {
		t.Logf("worker log:\n%s", worker.Output())
	}
	if serve.Alive() == false || worker.Alive() == false {
		t.Errorf("a process died: serve %v, worker %v\nserve log:\n%s\nworker log:\n%s", serve.Alive(), worker.Alive(), serve.Output(), worker.Output())
	}
}

// submitUntilAccepted submits job key (its script prints the key),
// retrying with the same idempotency key on 503s and unanswered requests.
func submitUntilAccepted(c *api.Client, l *ledger, key string) {
	for deadline := time.Now().Add(submitRetryFor); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		enq, err := c.Enqueue(context.Background(), jobs.Submission{Script: file("job.sh", "echo "+key+"\n"), IdempotencyKey: key})
		st := statusOf(err)
		l.answer(st)
		switch {
		case st == http.StatusOK:
			l.mu.Lock()
			if prev, ok := l.accepted[enq.ID]; ok && prev != key {
				l.wrong = append(l.wrong, fmt.Sprintf("submission %s answered with job %s of submission %s", key, enq.ID, prev))
			}
			l.accepted[enq.ID] = key
			l.mu.Unlock()
			return
		case st == http.StatusServiceUnavailable || st == -1:
			continue
		default:
			l.fail("submit %s: %v", key, err)
			return
		}
	}
	l.fail("submit %s: not accepted within %s", key, submitRetryFor)
}

// getSome GETs a few accepted jobs: each answer must be the job, or 503.
func getSome(ctx context.Context, c *api.Client, l *ledger) {
	n := 0
	for id := range l.ids() {
		if n++; n > 3 || ctx.Err() != nil {
			return
		}
		st, err := c.Status(context.Background(), id)
		code := statusOf(err)
		l.answer(code)
		switch {
		case code == http.StatusOK && st.ID != id:
			l.fail("GET %s answered job %s", id, st.ID)
		case code == http.StatusOK, code == http.StatusServiceUnavailable, code == -1:
		default:
			l.fail("GET %s: %v", id, err)
		}
	}
}

// checkAllDone waits until every accepted job is done, and checks that
// each succeeded printing its own key.
func checkAllDone(t *testing.T, c *api.Client, accepted map[string]string) {
	t.Helper()
	deadline := time.Now().Add(drainWithin)
	again := 0
	defer func() { t.Logf("%d of %d jobs ran more than once (a write lost in the switch)", again, len(accepted)) }()
	for id, key := range accepted {
		for {
			st, err := c.Status(context.Background(), id)
			if err == nil && st.State == jobs.StateDone {
				r := st.Result
				if r.Status != jobs.StatusSucceeded || r.Stdout == nil || strings.TrimSpace(r.Stdout.Tail) != key {
					t.Errorf("job %s (%s): %s (%s), stdout %+v", id, key, r.Status, r.Reason, r.Stdout)
				}
				if r.Attempt > 1 {
					again++
				}
				break
			}
			if errors.Is(err, jobs.ErrJobNotFound) {
				t.Errorf("job %s (%s), accepted, is lost", id, key)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s (%s) not done within %s: %+v %v", id, key, drainWithin, st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// writeAuth writes an auth config with one tenant, without rate limit or
// cap, and returns its token.
func writeAuth(t *testing.T, path string) string {
	t.Helper()
	tok, entry, err := api.NewToken("acme", "failover")
	if err != nil {
		t.Fatal(err)
	}
	auth := api.AuthConfig{
		Tenants: map[string]api.Tenant{"acme": {Queues: []string{jobs.DefaultQueue}, RatePerSecond: -1, MaxPending: -1}},
		Tokens:  []api.TokenEntry{entry},
	}
	b, err := json.Marshal(auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return tok
}

// startProc starts a sandq command, stopped when the test ends.
func startProc(t *testing.T, bin string, env []string, log string, args ...string) *testenv.Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	p, err := testenv.StartProcess(cmd, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p.Stop(30 * time.Second) {
			t.Errorf("sandq %s did not stop on SIGTERM", args[0])
		}
	})
	return p
}

// waitHealthy waits for the API's /healthz to answer 200.
func waitHealthy(t *testing.T, base string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/healthz: not 200 within 30s (%v)", base, err)
		}
	}
}
