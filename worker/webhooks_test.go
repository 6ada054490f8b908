package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
	"github.com/sandq/sandq/storage"
)

// webhookRig is the webhook side of a worker on a real Redis: finish()
// writes a job's result and queues its delivery as the job handler does,
// and start runs the worker's webhook delivery server.
type webhookRig struct {
	t      *testing.T
	cfg    jobs.Config
	rdb    redis.UniversalClient
	insp   *asynq.Inspector
	h      *Handler
	client *jobs.Client
}

func newWebhookRig(t *testing.T, wc jobs.WebhookConfig) *webhookRig {
	t.Helper()
	cfg := workerConfig(t, testenv.Redis(t))
	cfg.Webhook = wc
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr})
	t.Cleanup(func() { rdb.Close() })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	h := &Handler{cfg: cfg, rdb: rdb, insp: insp, client: asynq.NewClientFromRedisClient(rdb), logger: slog.New(slog.DiscardHandler)}
	store, err := storage.New(cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	client, err := jobs.NewClient(cfg, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if err := cfg.Webhook.Publish(context.Background(), rdb, map[string]int{"default": 1}); err != nil {
		t.Fatal(err)
	}
	return &webhookRig{t: t, cfg: cfg, rdb: rdb, insp: insp, h: h, client: client}
}

// finish makes a finished job of tenant (none: "") whose result goes to
// url (or the queue's default), and queues its delivery.
func (r *webhookRig) finish(tenant, url string) string {
	r.t.Helper()
	ctx := context.Background()
	job := &jobs.Job{ID: jobs.NewJobID(), Queue: "default", Tenant: tenant, Webhook: url, Runtime: "bash",
		Script: jobs.FileRef{Name: "x.sh", Key: "jobs/x/script/x.sh"}, Limits: jobs.Limits{Timeout: time.Minute}, SubmittedAt: time.Now().UTC()}
	payload, err := job.Marshal()
	if err != nil {
		r.t.Fatal(err)
	}
	res := &jobs.Result{ID: job.ID, Queue: job.Queue, Status: jobs.StatusSucceeded, Outputs: []jobs.OutputDoc{}}
	res.Webhook = r.h.webhookRef(job)
	body, _ := json.Marshal(res)
	// The job's task, completed with its result, as the job server leaves it.
	srv := asynq.NewServerFromRedisClient(r.rdb, asynq.Config{Concurrency: 1, Queues: map[string]int{"default": 1},
		TaskCheckInterval: 10 * time.Millisecond, Logger: slogAdapter{slog.New(slog.DiscardHandler)}, LogLevel: asynq.FatalLevel})
	done := make(chan error, 1)
	mux := asynq.NewServeMux()
	mux.HandleFunc(jobs.TypeRun, func(ctx context.Context, t *asynq.Task) error {
		_, err := t.ResultWriter().Write(body)
		done <- err
		return err
	})
	if err := srv.Start(mux); err != nil {
		r.t.Fatal(err)
	}
	defer srv.Shutdown()
	if _, err := r.h.client.EnqueueContext(ctx, asynq.NewTask(jobs.TypeRun, payload), r.cfg.TaskOptions(job)...); err != nil {
		r.t.Fatal(err)
	}
	if err := <-done; err != nil {
		r.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if info, err := r.insp.GetTaskInfo("default", job.ID); err == nil && info.State == asynq.TaskStateCompleted {
			break
		} else if time.Now().After(deadline) {
			r.t.Fatalf("job %s never completed: %v", job.ID, err)
		}
	}
	if err := r.h.enqueueWebhook(ctx, res); err != nil {
		r.t.Fatal(err)
	}
	return job.ID
}

// start runs the worker's webhook delivery server until the test ends.
func (r *webhookRig) start() {
	r.t.Helper()
	srv, wh := newWebhookServer(r.cfg, r.rdb, r.insp, NewMetrics(r.insp), slog.New(slog.DiscardHandler))
	mux := asynq.NewServeMux()
	mux.Handle(webhook.TaskType, wh)
	if err := srv.Start(mux); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(srv.Shutdown)
}

// state is the delivery state of a job's webhook.
func (r *webhookRig) state(id string) *webhook.Status {
	r.t.Helper()
	info, err := r.insp.GetTaskInfo("default", id)
	if err != nil {
		r.t.Fatal(err)
	}
	var res jobs.Result
	if err := json.Unmarshal(info.Result, &res); err != nil {
		r.t.Fatal(err)
	}
	return webhook.ReadStatus(context.Background(), r.insp, r.rdb, r.cfg.Webhook.Queue, res.ID, res.Webhook.URL, res.Webhook.ID)
}

// gauge counts requests in progress and their most at once.
type gauge struct {
	mu                sync.Mutex
	in, most, started int
}

func (g *gauge) add(d int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.in += d
	g.most = max(g.most, g.in)
	if d > 0 {
		g.started++
	}
}

func (g *gauge) stats() (most, started int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.most, g.started
}

// newHangingReceiver listens on ip and holds every request until release
// is closed (then answers 204) or the request ends (the worker's timeout:
// counted in ended). Its requests are counted in the gauges.
func newHangingReceiver(t *testing.T, ip string, release chan struct{}, ended *atomic.Int64, gauges ...*gauge) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		for _, g := range gauges {
			g.add(1)
		}
		select {
		case <-release:
		case <-req.Context().Done():
			ended.Add(1)
		}
		for _, g := range gauges {
			g.add(-1)
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/hook"
}

// promptReceiver listens on ip and answers 204 at once, recording for each
// request how many had ended in ended by then.
type promptReceiver struct {
	url string
	mu  sync.Mutex
	at  []int64
}

func newPromptReceiver(t *testing.T, ip string, ended *atomic.Int64) *promptReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	pr := &promptReceiver{url: "http://" + ln.Addr().String() + "/hook"}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		pr.mu.Lock()
		pr.at = append(pr.at, ended.Load())
		pr.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return pr
}

// waitArrivals waits for n requests and returns, for each, how many hanging
// requests had timed out when it arrived.
func (pr *promptReceiver) waitArrivals(t *testing.T, n int) []int64 {
	t.Helper()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		pr.mu.Lock()
		got := slices.Clone(pr.at)
		pr.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deliveries to the prompt receiver arrived in 90s", len(got), n)
		}
	}
}

// waitDelivered waits until each job's webhook is delivered, after exactly
// one attempt.
func (r *webhookRig) waitDelivered(ids []string) {
	r.t.Helper()
	for _, id := range ids {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			ws := r.state(id)
			if ws.State == "delivered" {
				if len(ws.Attempts) != 1 {
					r.t.Errorf("%s: attempts %+v, want one", id, ws.Attempts)
				}
				break
			}
			if ws.State == "failed" || time.Now().After(deadline) {
				r.t.Fatalf("%s: webhook %s, attempts %+v; want delivered", id, ws.State, ws.Attempts)
			}
		}
	}
}

// A receiver that hangs does not hold up other receivers' events: with
// many deliveries to hanging receiver X queued ahead of them, the
// deliveries to receiver Y arrive while X's first requests are still
// hanging, before any of them has timed out. X never has more than the
// per-host cap of requests at once. Deliveries put back for want of a slot
// are not attempts: with one attempt allowed, every X delivery is still
// delivered once X answers.
func TestHangingReceiverDoesNotDelayOthers(t *testing.T) {
	testenv.Long(t, "waits out a hanging receiver (5s)")
	secret, _ := webhook.NewSecret()
	rig := newWebhookRig(t, jobs.WebhookConfig{Secrets: map[string][]string{"*": {secret}}, AllowPrivate: true,
		Timeout: 10 * time.Second, MaxAttempts: 1, Schedule: []time.Duration{30 * time.Second}})
	release := make(chan struct{})
	var timedOut atomic.Int64
	// Two hosts: loopback has all of 127.0.0.0/8.
	var xg gauge
	x := newHangingReceiver(t, "127.0.0.2", release, &timedOut, &xg)
	y := newPromptReceiver(t, "127.0.0.3", &timedOut)
	var xs, ys []string
	for range 24 {
		xs = append(xs, rig.finish("", x))
	}
	for range 4 {
		ys = append(ys, rig.finish("", y.url))
	}
	rig.start()
	yAt := y.waitArrivals(t, len(ys))
	t.Logf("X requests timed out as each Y delivery arrived: %v", yAt)
	for i, n := range yAt {
		if n != 0 {
			t.Errorf("Y delivery %d arrived after %d requests to X had timed out", i+1, n)
		}
	}
	close(release)
	rig.waitDelivered(append(xs, ys...))
	most, started := xg.stats()
	t.Logf("X: %d requests, at most %d at once", started, most)
	if limit := rig.cfg.Webhook.HostConcurrency; most > limit {
		t.Errorf("X had %d requests at once, over the per-host cap of %d", most, limit)
	}
}

// A tenant whose many receivers (on many hosts) all hang holds at most its
// tenant's share of a worker's delivery slots: another tenant's deliveries
// arrive while the first tenant's requests are still hanging.
func TestTenantWithHangingReceiversDoesNotDelayOthers(t *testing.T) {
	testenv.Long(t, "waits out hanging receivers (5s)")
	sa, _ := webhook.NewSecret()
	sb, _ := webhook.NewSecret()
	rig := newWebhookRig(t, jobs.WebhookConfig{TenantSecrets: map[string][]string{"slow": {sa}, "quick": {sb}}, AllowPrivate: true,
		Timeout: 10 * time.Second, MaxAttempts: 1, Schedule: []time.Duration{30 * time.Second}})
	release := make(chan struct{})
	var timedOut atomic.Int64
	var slowAll gauge
	var slow []string
	for i := range 8 { // 8 hosts of 3 deliveries: 24 > concurrency 16
		u := newHangingReceiver(t, fmt.Sprintf("127.0.1.%d", i+1), release, &timedOut, &slowAll)
		for range 3 {
			slow = append(slow, rig.finish("slow", u))
		}
	}
	y := newPromptReceiver(t, "127.0.2.1", &timedOut)
	var quick []string
	for range 4 {
		quick = append(quick, rig.finish("quick", y.url))
	}
	rig.start()
	yAt := y.waitArrivals(t, len(quick))
	t.Logf("tenant slow's requests timed out as each of tenant quick's deliveries arrived: %v", yAt)
	for i, n := range yAt {
		if n != 0 {
			t.Errorf("tenant quick's delivery %d arrived after %d of tenant slow's requests had timed out", i+1, n)
		}
	}
	close(release)
	rig.waitDelivered(append(slow, quick...))
	most, started := slowAll.stats()
	t.Logf("tenant slow: %d requests, at most %d at once", started, most)
	if limit := rig.cfg.Webhook.TenantConcurrency; most > limit {
		t.Errorf("tenant slow had %d requests at once, over the per-tenant cap of %d", most, limit)
	}
}

// A tenant's job may ask for a webhook only when the workers hold a signing
// secret of that tenant: queue secrets are shared by every producer of the
// queue, so a delivery they sign proves nothing to the tenant's receiver.
// The refusal names the field, and leaves nothing behind.
func TestTenantWebhookNeedsTenantSecret(t *testing.T) {
	queueSecret, _ := webhook.NewSecret()
	acmeSecret, _ := webhook.NewSecret()
	rig := newWebhookRig(t, jobs.WebhookConfig{Secrets: map[string][]string{"*": {queueSecret}}, TenantSecrets: map[string][]string{"acme": {acmeSecret}}})
	ctx := context.Background()
	sub := jobs.Submission{Queue: "default", Tenant: "beta", Webhook: "http://203.0.113.9/hook",
		Script: jobs.File{Name: "x.sh", Size: 4, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("true")), nil }}}
	d, existing, err := rig.client.Begin(ctx, sub)
	if d != nil {
		d.Abort(ctx)
	}
	var fe *jobs.FieldError
	if !errors.As(err, &fe) || fe.Field != "webhook" || !strings.Contains(fe.Msg, "beta") || existing != nil {
		t.Fatalf("tenant without a secret: draft %v, existing %v, err %v; want a refusal naming the webhook field and the tenant", d != nil, existing, err)
	}
	t.Logf("refused: %v", err)
	if strings.Contains(fe.Msg, "acme") {
		t.Errorf("the refusal names another tenant: %q", fe.Msg)
	}
	if n, _ := rig.rdb.SCard(ctx, keys.TenantOpen("beta")).Result(); n != 0 {
		t.Errorf("the refused submission left %d reservations", n)
	}
	// The same job without a webhook is fine.
	sub.Webhook = ""
	d, _, err = rig.client.Begin(ctx, sub)
	if err != nil {
		t.Fatalf("tenant beta without a webhook: %v", err)
	}
	d.Abort(ctx)
	// A tenant with a secret may ask for one; so may a job without a
	// tenant (a producer with Redis access), which the queue secret signs.
	sub.Webhook = "http://203.0.113.9/hook"
	for _, tenant := range []string{"acme", ""} {
		sub.Tenant = tenant
		d, _, err = rig.client.Begin(ctx, sub)
		if err != nil {
			t.Fatalf("tenant %q: %v", tenant, err)
		}
		d.Abort(ctx)
	}
	// What the workers publish names the tenants, never their secrets.
	b, err := rig.rdb.HGet(ctx, keys.WebhookPolicy, "default").Result()
	if err != nil || !strings.Contains(b, `"acme"`) || strings.Contains(b, acmeSecret) || strings.Contains(b, strings.TrimPrefix(acmeSecret, webhook.SecretPrefix)) {
		t.Errorf("published policy %s (%v): want the tenant's name and not its secret", b, err)
	}
}

// recordingReceiver keeps every request it gets, and answers 204.
type recordingReceiver struct {
	url  string
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func newRecordingReceiver(t *testing.T) *recordingReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rr := &recordingReceiver{url: "http://" + ln.Addr().String() + "/hook"}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		rr.mu.Lock()
		rr.reqs = append(rr.reqs, req)
		rr.body = append(rr.body, b)
		rr.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rr
}

// byID returns the request carrying webhook-id id, waiting for it.
func (rr *recordingReceiver) byID(t *testing.T, id string) (http.Header, []byte) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		rr.mu.Lock()
		for i, r := range rr.reqs {
			if r.Header.Get(webhook.HeaderID) == id {
				rr.mu.Unlock()
				return r.Header, rr.body[i]
			}
		}
		rr.mu.Unlock()
	}
	t.Fatalf("no delivery with webhook-id %s", id)
	return nil, nil
}

// A tenant's deliveries, to its own URL or to the queue's default, verify
// with its own secrets (each of two, while one is rotated out) and with no
// other tenant's or the queue's. A tenant without a secret gets no default
// webhook: the delivery log says why, and nothing is sent. Jobs without a
// tenant are signed with the queue's secret.
func TestTenantDeliveriesAreSignedWithTheTenantsSecret(t *testing.T) {
	queueSecret, _ := webhook.NewSecret()
	a1, _ := webhook.NewSecret()
	a2, _ := webhook.NewSecret()
	b1, _ := webhook.NewSecret()
	own, def := newRecordingReceiver(t), newRecordingReceiver(t)
	rig := newWebhookRig(t, jobs.WebhookConfig{AllowPrivate: true, Secrets: map[string][]string{"*": {queueSecret}},
		TenantSecrets: map[string][]string{"acme": {a1, a2}, "beta": {b1}}, Defaults: map[string]string{"default": def.url}})
	aOwn := rig.finish("acme", own.url)
	aDefault := rig.finish("acme", "")
	none := rig.finish("", own.url)
	noSecret := rig.finish("gamma", "")
	rig.start()
	now := time.Now()
	check := func(name string, h http.Header, body []byte, good []string, bad ...[]string) {
		t.Helper()
		for _, s := range good {
			if err := webhook.Verify([]string{s}, h, body, now); err != nil {
				t.Errorf("%s: does not verify with one of its secrets: %v", name, err)
			}
		}
		for _, s := range bad {
			if err := webhook.Verify(s, h, body, now); err == nil {
				t.Errorf("%s: verifies with a secret it must not", name)
			}
		}
	}
	h, body := own.byID(t, webhook.EventID(aOwn))
	if n := len(strings.Fields(h.Get(webhook.HeaderSignature))); n != 2 {
		t.Errorf("acme's delivery has %d signatures, want 2 (two secrets)", n)
	}
	check("acme, own URL", h, body, []string{a1, a2}, []string{b1}, []string{queueSecret})
	h, body = def.byID(t, webhook.EventID(aDefault))
	check("acme, queue default", h, body, []string{a1, a2}, []string{b1}, []string{queueSecret})
	h, body = own.byID(t, webhook.EventID(none))
	if n := len(strings.Fields(h.Get(webhook.HeaderSignature))); n != 1 {
		t.Errorf("the delivery without a tenant has %d signatures, want 1", n)
	}
	check("no tenant", h, body, []string{queueSecret}, []string{a1, a2, b1})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ws := rig.state(noSecret)
		if ws.State == "failed" {
			if len(ws.Attempts) != 1 || !strings.Contains(ws.Attempts[0].Error, "tenant gamma has no webhook signing secret") {
				t.Errorf("tenant without a secret: log %+v", ws.Attempts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenant without a secret: webhook %s, log %+v; want failed", ws.State, ws.Attempts)
		}
	}
	def.mu.Lock()
	defer def.mu.Unlock()
	for _, r := range def.reqs {
		if r.Header.Get(webhook.HeaderID) == webhook.EventID(noSecret) {
			t.Error("the default webhook of a tenant without a secret was sent")
		}
	}
}

// Attempts are counted by the handler (asynq's retry budget is one more,
// so that a postponed delivery is never archived unattempted): a receiver
// that always fails gets exactly MaxAttempts attempts, then the delivery
// is failed.
func TestDeliveryGivesUpAfterMaxAttempts(t *testing.T) {
	testenv.Long(t, "waits out the retry schedule (3s)")
	secret, _ := webhook.NewSecret()
	rig := newWebhookRig(t, jobs.WebhookConfig{Secrets: map[string][]string{"*": {secret}}, AllowPrivate: true,
		MaxAttempts: 2, Schedule: []time.Duration{time.Second}})
	var hits atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	id := rig.finish("", "http://"+ln.Addr().String()+"/hook")
	rig.start()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ws := rig.state(id)
		if ws.State == "failed" {
			if len(ws.Attempts) != 2 || hits.Load() != 2 {
				t.Errorf("%d requests, log %+v; want 2 attempts", hits.Load(), ws.Attempts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook %s after 30s, log %+v; want failed after 2 attempts", ws.State, ws.Attempts)
		}
	}
	time.Sleep(2 * time.Second)
	if n := hits.Load(); n != 2 {
		t.Errorf("%d requests after giving up, want 2", n)
	}
}
