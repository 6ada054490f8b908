package redismodes

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"

	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// jobWithin bounds one job's run, sandbox start to result.
const jobWithin = 2 * time.Minute

// file is an in-memory file to submit.
func file(name, content string) jobs.File {
	return jobs.File{Name: name, Size: int64(len(content)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(content)), nil
	}}
}

// config is a worker and producer configuration over redis (its Redis
// fields set by the caller), the suite's MinIO and the test image.
func config(t *testing.T, redis jobs.Config) jobs.Config {
	t.Helper()
	secret, err := webhook.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	acmeSecret, err := webhook.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp(env.suite.Dir, "state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cfg := redis
	cfg.Storage = env.s3
	cfg.Worker = jobs.WorkerConfig{
		Concurrency: 2, StateDir: state, ImageDir: env.suite.Image.Dir, Image: env.suite.Image.Name,
		Queues: map[string]int{jobs.DefaultQueue: 1}, ShutdownGrace: 5 * time.Second,
	}
	cfg.MaxRetry = 1
	cfg.PollInterval = 100 * time.Millisecond
	cfg.Webhook = jobs.WebhookConfig{
		Secrets: map[string][]string{"*": {secret}}, TenantSecrets: map[string][]string{"acme": {acmeSecret}}, AllowPrivate: true,
		Schedule: []time.Duration{2 * time.Second, 2 * time.Second}, Timeout: 2 * time.Second, MaxAttempts: 3,
	}
	return cfg.WithDefaults()
}

// receiver records the job IDs of the webhooks it is sent.
type receiver struct {
	*httptest.Server
	mu  sync.Mutex
	ids map[string]int
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{ids: map[string]int{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var doc struct {
			ID string `json:"id"`
		}
		json.NewDecoder(req.Body).Decode(&doc)
		r.mu.Lock()
		r.ids[doc.ID]++
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

// runCore runs the core end-to-end subset over the Redis cfg names: an
// in-process runsc worker and API server; a job with an input and an
// output run through the API, its result, presigned link, place in the
// tenant's list and webhook; the cap on event streams and the rate limit
// (Redis scripts) biting; a running job cancelled (pub/sub).
func runCore(t *testing.T, cfg jobs.Config) {
	testenv.NeedRunsc(t)
	testenv.NeedImage(t)
	ctx := context.Background()
	sandqtest.NewWorker(t, cfg, executor.RunscConfig{StateDir: cfg.Worker.StateDir}, env.store)
	url, toks := sandqtest.API(t, cfg, env.store, nil, map[string]api.Tenant{
		"acme": {Queues: []string{jobs.DefaultQueue}},
		"slow": {Queues: []string{jobs.DefaultQueue}, RatePerSecond: 0.1, Burst: 2},
		"one":  {Queues: []string{jobs.DefaultQueue}, MaxStreams: 1},
	})
	client := func(tenant string) *api.Client {
		c, err := api.NewClient(url, toks[tenant])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	acme := client("acme")
	recv := newReceiver(t)

	t.Run("job with input, output, list and webhook", func(t *testing.T) {
		marker := "marker-" + jobs.NewJobID()[:8]
		enq, err := acme.Enqueue(ctx, jobs.Submission{
			Script:  file("job.sh", "cat /mnt/inputs/in.txt; cp /mnt/inputs/in.txt /mnt/outputs/out.txt\n"),
			Inputs:  []jobs.File{file("in.txt", marker)},
			Webhook: recv.URL,
		})
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		wctx, cancel := context.WithTimeout(ctx, jobWithin)
		defer cancel()
		st, err := acme.Wait(wctx, enq.ID, nil)
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		r := st.Result
		if r.Status != jobs.StatusSucceeded || r.Stdout == nil || !strings.Contains(r.Stdout.Tail, marker) {
			t.Fatalf("result %s (%s), stdout %+v: want succeeded with the input on stdout", r.Status, r.Reason, r.Stdout)
		}
		if len(r.Outputs) != 1 || r.Outputs[0].Path != "out.txt" {
			t.Fatalf("outputs %+v, want out.txt", r.Outputs)
		}
		resp, err := http.Get(r.Outputs[0].URL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != marker {
			t.Fatalf("output link: %d %q, want 200 %q", resp.StatusCode, b, marker)
		}
		l, err := acme.List(ctx, jobs.ListFilter{})
		if err != nil || len(l.Jobs) == 0 || l.Jobs[0].ID != enq.ID {
			t.Fatalf("tenant list %+v (%v): want the job first", l, err)
		}
		for deadline := time.Now().Add(30 * time.Second); recv.got(enq.ID) == 0; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no webhook within 30s")
			}
		}
	})

	t.Run("stream cap and cancel of a running job", func(t *testing.T) {
		one := client("one")
		enq, err := one.Enqueue(ctx, jobs.Submission{Script: file("sleep.sh", "echo started; sleep 120\n")})
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, one, enq.ID, jobs.StateActive)
		stream := openEvents(t, url, toks["one"], enq.ID)
		defer stream.Body.Close()
		if stream.StatusCode != 200 {
			t.Fatalf("first event stream: %d", stream.StatusCode)
		}
		second := openEvents(t, url, toks["one"], enq.ID)
		second.Body.Close()
		if second.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("second event stream of a tenant with max 1: %d, want 429", second.StatusCode)
		}
		out, err := one.Cancel(ctx, enq.ID)
		if err != nil || out != jobs.CancelSignalled {
			t.Fatalf("cancel: %q %v, want signalled", out, err)
		}
		if done := readDone(t, stream); done.Result == nil || done.Result.Status != jobs.StatusCanceled {
			t.Fatalf("after cancel: %+v, want canceled", done)
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		slow := client("slow")
		var se *api.StatusError
		for i := range 3 {
			_, err := slow.List(ctx, jobs.ListFilter{})
			if i < 2 && err != nil {
				t.Fatalf("request %d of a burst of 2: %v", i+1, err)
			}
			if i == 2 && (!errors.As(err, &se) || se.Status != http.StatusTooManyRequests || se.Err.Code != "rate_limited") {
				t.Fatalf("third request of a burst of 2: %v, want 429 rate_limited", err)
			}
		}
	})
}

// waitState polls a job until it is in state want.
func waitState(t *testing.T, c *api.Client, id string, want jobs.State) {
	t.Helper()
	for deadline := time.Now().Add(jobWithin); ; time.Sleep(100 * time.Millisecond) {
		st, err := c.Status(context.Background(), id)
		if err == nil && st.State == want {
			return
		}
		if err == nil && st.State == jobs.StateDone {
			t.Fatalf("job %s ended %s (%s) before %s", id, st.Result.Status, st.Result.Reason, want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not %s: %+v %v", id, want, st, err)
		}
	}
}

// openEvents opens a job's event stream.
func openEvents(t *testing.T, url, token, id string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/v1/jobs/"+id+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// readDone reads an event stream to its done event.
func readDone(t *testing.T, resp *http.Response) *jobs.JobStatus {
	t.Helper()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event:"); ok {
			event = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "data:"); ok && event == "done" {
			var j api.Job
			if err := json.Unmarshal([]byte(strings.TrimSpace(v)), &j); err != nil {
				t.Fatal(err)
			}
			return j.JobStatus
		}
	}
	t.Fatalf("event stream ended without done: %v", sc.Err())
	return nil
}

// TestCoreOverTLSWithClientCert runs the core subset on a Redis that
// speaks TLS only and requires a client certificate; without the
// certificate the worker cannot start.
func TestCoreOverTLSWithClientCert(t *testing.T) {
	addr, files := testenv.RedisTLS(t, testenv.RedisTLSOptions{RequireClientCert: true})
	noCert := config(t, jobs.Config{RedisURL: "rediss://" + addr, RedisCAFile: files.CA})
	if err := pingWith(noCert); err == nil {
		t.Fatal("a client without a certificate got in")
	}
	runCore(t, config(t, jobs.Config{RedisURL: "rediss://" + addr, RedisCAFile: files.CA, RedisCertFile: files.ClientCert, RedisKeyFile: files.ClientKey}))
}

// TestCoreOverSentinelByURL runs the core subset through Sentinel, named
// by a redis+sentinel:// URL, with replicated acknowledgements.
func TestCoreOverSentinelByURL(t *testing.T) {
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 1, Password: "s3cret"})
	u := "redis+sentinel://:s3cret@" + strings.Join(set.SentinelAddrs(), ",") + "/" + set.MasterName
	runCore(t, config(t, jobs.Config{RedisURL: u, RedisWaitReplicas: 1}))
}

// TestCoreOverSentinelByFlags is the same with the Sentinels and master
// named by their own settings (--redis-sentinels, --redis-master-name).
func TestCoreOverSentinelByFlags(t *testing.T) {
	set := testenv.StartSentinel(t, testenv.SentinelOptions{Replicas: 1})
	runCore(t, config(t, jobs.Config{RedisSentinels: set.SentinelAddrs(), RedisMasterName: set.MasterName}))
}

// TestCoreOverCluster runs the core subset on a Redis Cluster of three
// primaries with a replica each.
func TestCoreOverCluster(t *testing.T) {
	cl := testenv.StartCluster(t, testenv.ClusterOptions{Masters: 3, ReplicasPerMaster: 1})
	runCore(t, config(t, jobs.Config{RedisURL: "redis+cluster://" + strings.Join(cl.Addrs(), ",")}))
}

// pingWith pings the Redis cfg names.
func pingWith(cfg jobs.Config) error {
	rdb, err := cfg.NewRedisClient()
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return rdb.Ping(ctx).Err()
}
