package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/jobs/webhook"
)

// receiver is a webhook receiver on loopback whose answers the test
// scripts: respond(n) gives the status (and headers) of request n (from 1).
type receiver struct {
	t       *testing.T
	srv     *http.Server
	addr    string
	mu      sync.Mutex
	got     []delivery
	respond func(n int, w http.ResponseWriter)
}

type delivery struct {
	at     time.Time
	header http.Header
	body   []byte
	path   string
}

func newReceiver(t *testing.T, addr string, respond func(n int, w http.ResponseWriter)) *receiver {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, addr: l.Addr().String(), respond: respond}
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, delivery{at: time.Now(), header: req.Header.Clone(), body: body, path: req.URL.Path})
		n := len(r.got)
		r.mu.Unlock()
		if r.respond != nil {
			r.respond(n, w)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go r.srv.Serve(l)
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *receiver) url() string { return "http://" + r.addr + "/hook" }

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// waitFor waits until the receiver has n requests.
func (r *receiver) waitFor(n int, limit time.Duration) []delivery {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if d := r.deliveries(); len(d) >= n {
			return d
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("receiver got %d requests in %s, want %d", len(r.deliveries()), limit, n)
	return nil
}

func webhookSecrets() []string { return env.cfg.Webhook.Secrets["*"] }

// webhookState waits for the job's webhook to reach state and returns it.
func webhookState(t *testing.T, id, state string, limit time.Duration) *webhook.Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last *webhook.Status
	for time.Now().Before(deadline) {
		st, err := env.client.Status(context.Background(), id)
		if err == nil && st.Webhook != nil {
			last = st.Webhook
			if st.Webhook.State == state {
				return st.Webhook
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("webhook of %s never reached %s: %+v", id, state, last)
	return nil
}

func TestWebhookDeliveredOnceVerifiedBodyIsTheStatus(t *testing.T) {
	rcv := newReceiver(t, "", nil)
	r := runJob(t, jobs.Submission{Script: file(t, "hi.sh", "echo hi > $OUTPUT_DIR/hi.txt"), Webhook: rcv.url()})
	wantStatus(t, r, jobs.StatusSucceeded)
	ws := webhookState(t, r.ID, "delivered", 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a second delivery would show up now
	got := rcv.deliveries()
	if len(got) != 1 || len(ws.Attempts) != 1 || ws.Attempts[0].Outcome != "delivered" {
		t.Fatalf("%d deliveries, log %+v", len(got), ws.Attempts)
	}
	d := got[0]
	if err := webhook.Verify(webhookSecrets(), d.header, d.body, time.Now()); err != nil {
		t.Errorf("delivery does not verify: %v", err)
	}
	if d.header.Get("webhook-id") != r.Webhook.ID || d.header.Get("Content-Type") != "application/json" {
		t.Errorf("headers %v, result webhook %+v", d.header, r.Webhook)
	}
	// The body is `sandq status --json` without its delivery log.
	out, _, code := sandq(t, "status", r.ID, "--json")
	var status, body map[string]any
	if err := json.Unmarshal([]byte(out), &status); err != nil || code != 0 {
		t.Fatalf("status --json: %v (exit %d)", err, code)
	}
	if _, ok := status["webhook_delivery"]; !ok {
		t.Error("status --json has no webhook_delivery")
	}
	delete(status, "webhook_delivery")
	if err := json.Unmarshal(d.body, &body); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(status, body) {
		t.Errorf("webhook body differs from status --json:\n%s\nvs\n%s", d.body, out)
	}
}

func TestWebhookReceiverDownThenUp(t *testing.T) {
	// A port nothing listens on yet.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	r := runJob(t, jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: "http://" + addr + "/hook"})
	ws := webhookState(t, r.ID, "retry", 30*time.Second)
	if len(ws.Attempts) == 0 || ws.Attempts[0].Error == "" {
		t.Fatalf("first attempt %+v", ws.Attempts)
	}
	fail := true
	rcv := newReceiver(t, addr, func(n int, w http.ResponseWriter) {
		if n == 1 && fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	got := rcv.waitFor(2, 60*time.Second)
	ws = webhookState(t, r.ID, "delivered", 30*time.Second)
	if len(ws.Attempts) < 3 {
		t.Errorf("attempts %+v, want a connection failure, a 503 and a success", ws.Attempts)
	}
	if got[0].header.Get("webhook-id") != got[1].header.Get("webhook-id") || got[0].header.Get("webhook-id") != r.Webhook.ID {
		t.Errorf("webhook-id changed across attempts: %q %q", got[0].header.Get("webhook-id"), got[1].header.Get("webhook-id"))
	}
	if got[0].header.Get("webhook-timestamp") == got[1].header.Get("webhook-timestamp") {
		t.Errorf("the timestamp did not change between attempts %v apart", got[1].at.Sub(got[0].at))
	}
	for _, d := range got {
		if err := webhook.Verify(webhookSecrets(), d.header, d.body, d.at); err != nil {
			t.Errorf("attempt does not verify: %v", err)
		}
	}
}

func TestWebhookRetrySemantics(t *testing.T) {
	cases := []struct {
		name     string
		respond  func(n int, w http.ResponseWriter)
		state    string
		requests int
		check    func(t *testing.T, got []delivery, ws *webhook.Status)
	}{
		{"500 then 200", func(n int, w http.ResponseWriter) {
			if n == 1 {
				w.WriteHeader(500)
				return
			}
			w.WriteHeader(200)
		}, "delivered", 2, nil},
		{"429 with Retry-After 2", func(n int, w http.ResponseWriter) {
			if n == 1 {
				w.Header().Set("Retry-After", "2")
				w.WriteHeader(429)
				return
			}
			w.WriteHeader(200)
		}, "delivered", 2, func(t *testing.T, got []delivery, ws *webhook.Status) {
			if gap := got[1].at.Sub(got[0].at); gap < 2*time.Second {
				t.Errorf("retried %s after a 429 with Retry-After: 2", gap)
			}
		}},
		{"410 stops", func(n int, w http.ResponseWriter) { w.WriteHeader(410) }, "failed", 1, nil},
		{"302 is not followed", func(n int, w http.ResponseWriter) {
			w.Header().Set("Location", "/elsewhere")
			w.WriteHeader(302)
		}, "failed", 1, func(t *testing.T, got []delivery, ws *webhook.Status) {
			for _, d := range got {
				if d.path == "/elsewhere" {
					t.Error("the redirect was followed")
				}
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rcv := newReceiver(t, "", c.respond)
			r := runJob(t, jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: rcv.url()})
			ws := webhookState(t, r.ID, c.state, 60*time.Second)
			time.Sleep(1500 * time.Millisecond) // no further attempts come
			got := rcv.deliveries()
			if len(got) != c.requests || len(ws.Attempts) != c.requests {
				t.Errorf("%d requests, %d logged (%+v), want %d", len(got), len(ws.Attempts), ws.Attempts, c.requests)
			}
			if c.check != nil && len(got) >= c.requests {
				c.check(t, got, ws)
			}
		})
	}
}

func TestWebhookTimeoutIsRetried(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	rcv := newReceiver(t, "", func(n int, w http.ResponseWriter) {
		if n == 1 {
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
			return
		}
		w.WriteHeader(200)
	})
	r := runJob(t, jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: rcv.url()})
	ws := webhookState(t, r.ID, "delivered", 60*time.Second)
	if len(ws.Attempts) != 2 || !strings.Contains(strings.ToLower(ws.Attempts[0].Error), "timeout") && !strings.Contains(ws.Attempts[0].Error, "deadline") {
		t.Fatalf("attempts %+v, want a timeout then a delivery", ws.Attempts)
	}
	if limit := env.cfg.Webhook.Timeout; time.Duration(ws.Attempts[0].DurationMS)*time.Millisecond < limit-100*time.Millisecond {
		t.Errorf("the timed-out attempt took %dms, under the %s limit", ws.Attempts[0].DurationMS, limit)
	}
}

func TestWebhookURLGuard(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://localhost/x", "ftp://example.com/x", "not a url"} {
		// No worker serves "guarded", so no policy allows private addresses.
		_, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Queue: "guarded", Webhook: u})
		var fe *jobs.FieldError
		if !errors.As(err, &fe) || fe.Field != "webhook" {
			t.Errorf("%s: %v, want a refusal naming webhook", u, err)
		}
	}
	// A fine URL on a queue whose workers cannot sign.
	_, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Queue: "guarded", Webhook: "https://hooks.example/sandq"})
	if err == nil || !strings.Contains(err.Error(), "no webhook signing secret") {
		t.Errorf("webhook on a queue without a secret: %v", err)
	}
	// Over-long URLs are refused even where private URLs are allowed.
	_, err = env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: "http://127.0.0.1/" + strings.Repeat("a", 2100)})
	if err == nil || !strings.Contains(err.Error(), "longer than 2048") {
		t.Errorf("a 2100-byte webhook URL: %v", err)
	}
	// The delivery queue is not a job queue.
	if _, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Queue: "webhooks"}); err == nil {
		t.Error("a job was queued on the webhook delivery queue")
	}
}

func TestWebhookVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	secret := webhookSecrets()[0]
	body := []byte(`{"id":"x","status":"succeeded"}`)
	write := func(name string, h http.Header, b []byte) string {
		var sb strings.Builder
		sb.WriteString("POST /hook HTTP/1.1\r\nHost: example\r\n")
		for k, v := range h {
			sb.WriteString(k + ": " + v[0] + "\r\n")
		}
		sb.WriteString(fmt.Sprintf("Content-Length: %d\r\n\r\n", len(b)))
		sb.Write(b)
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(sb.String()), 0o644)
		return p
	}
	now := time.Now()
	h, err := webhook.Headers([]string{secret}, "msg_1", now, body)
	if err != nil {
		t.Fatal(err)
	}
	good := write("good.http", h, body)
	tampered := write("tampered.http", h, []byte(`{"id":"x","status":"failed"}`))
	old, _ := webhook.Headers([]string{secret}, "msg_1", now.Add(-10*time.Minute), body)
	stale := write("stale.http", old, body)
	if out, errOut, code := sandq(t, "webhook", "verify", "--secret", secret, good); code != 0 || !strings.Contains(out, "verified") {
		t.Errorf("good request: exit %d %s %s", code, out, errOut)
	}
	for _, p := range []string{tampered, stale} {
		if _, errOut, code := sandq(t, "webhook", "verify", "--secret", secret, p); code != 1 || !strings.Contains(errOut, "not verified") {
			t.Errorf("%s: exit %d %s", filepath.Base(p), code, errOut)
		}
	}
	if _, _, code := sandq(t, "webhook", "verify", "--secret", secret, "--ignore-age", stale); code != 0 {
		t.Errorf("stale request with --ignore-age: exit %d", code)
	}
}

func TestCancelledBeforeStartStillSendsItsWebhook(t *testing.T) {
	ctx := context.Background()
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: env.stack.RedisAddr})
	defer insp.Close()
	if err := insp.PauseQueue("other"); err != nil {
		t.Fatal(err)
	}
	rcv := newReceiver(t, "", nil)
	enq := submit(t, jobs.Submission{Script: file(t, "x.sh", "echo should-not-run > $OUTPUT_DIR/x"), Queue: "other", Webhook: rcv.url()})
	out, err := env.client.Cancel(ctx, enq.ID)
	if err != nil || out != jobs.CancelQueued {
		t.Fatalf("cancel: %v %v", out, err)
	}
	if err := insp.UnpauseQueue("other"); err != nil {
		t.Fatal(err)
	}
	r := waitResult(t, enq.ID, time.Minute)
	wantStatus(t, r, jobs.StatusCanceled)
	if len(r.Outputs) != 0 {
		t.Errorf("a job cancelled before it started ran: %+v", r.Outputs)
	}
	got := rcv.waitFor(1, 30*time.Second)
	var body jobs.Result
	if err := json.Unmarshal(got[0].body, &body); err != nil || body.Status != jobs.StatusCanceled || body.ID != enq.ID {
		t.Errorf("webhook body %s", got[0].body)
	}
}

// Tenants' webhooks are signed with the tenant's own secrets, never with
// the queue's, so that no other producer of the queue can forge a tenant's
// events. Through jobs.Client with Tenant set, as the API submits: a
// tenant's delivery, to its own URL or to the queue's default, verifies
// with each of its two secrets (rotation) and with no other tenant's or the
// queue's; a job without a tenant is signed with the queue's secret; a
// tenant without a secret is refused a webhook at enqueue (naming the
// field), and its jobs' default webhook is not sent, the delivery log
// saying why. The worker has a delivery queue of its own, so the shared
// worker (which has no tenant secrets) takes none of its deliveries.
func TestWebhookSignedWithTheTenantsOwnSecret(t *testing.T) {
	ctx := context.Background()
	secret := func() string {
		s, err := webhook.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	queueSecret, a1, a2, b1 := secret(), secret(), secret(), secret()
	own, def := newReceiver(t, "", nil), newReceiver(t, "", nil)
	cfg := env.cfg
	cfg.Worker.Queues = map[string]int{"tenant-hooks": 1}
	cfg.Webhook.Queue = "webhooks-tenants"
	cfg.Webhook.Secrets = map[string][]string{"*": {queueSecret}}
	cfg.Webhook.TenantSecrets = map[string][]string{"tenant-a": {a1, a2}, "tenant-b": {b1}}
	cfg.Webhook.Defaults = map[string]string{"tenant-hooks": def.url()}
	x := startWorker(t, cfg, executor.RunscConfig{StateDir: env.state})

	// A tenant without a secret may not ask for a webhook.
	_, err := x.Client.Enqueue(ctx, jobs.Submission{Script: file(t, "x.sh", "true"), Queue: "tenant-hooks", Tenant: "tenant-c", Webhook: own.url()})
	var fe *jobs.FieldError
	if !errors.As(err, &fe) || fe.Field != "webhook" || !strings.Contains(fe.Msg, "tenant-c") || !strings.Contains(fe.Msg, "secret") {
		t.Fatalf("a tenant without a secret asked for a webhook: %v; want a refusal naming the webhook field", err)
	}
	run := func(tenant, url string) *jobs.Result {
		t.Helper()
		enq, err := x.Client.Enqueue(ctx, jobs.Submission{Script: file(t, "x.sh", "echo hi"), Queue: "tenant-hooks", Tenant: tenant, Webhook: url})
		if err != nil {
			t.Fatalf("tenant %q: %v", tenant, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		st, err := x.Client.Wait(wctx, enq.ID, nil)
		if err != nil {
			t.Fatalf("wait for %s: %v", enq.ID, err)
		}
		wantStatus(t, st.Result, jobs.StatusSucceeded)
		return st.Result
	}
	aOwn, aDefault, noTenant, cDefault := run("tenant-a", own.url()), run("tenant-a", ""), run("", own.url()), run("tenant-c", "")
	find := func(r *receiver, res *jobs.Result) delivery {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			for _, d := range r.deliveries() {
				if d.header.Get("webhook-id") == res.Webhook.ID {
					return d
				}
			}
		}
		t.Fatalf("no delivery of %s", res.ID)
		return delivery{}
	}
	verifies := func(d delivery, secrets ...string) bool {
		return webhook.Verify(secrets, d.header, d.body, d.at) == nil
	}
	for name, d := range map[string]delivery{"tenant-a, own URL": find(own, aOwn), "tenant-a, queue default": find(def, aDefault)} {
		if n := len(strings.Fields(d.header.Get("webhook-signature"))); n != 2 {
			t.Errorf("%s: %d signatures, want 2 (two secrets)", name, n)
		}
		if !verifies(d, a1) || !verifies(d, a2) {
			t.Errorf("%s: does not verify with each of tenant-a's secrets", name)
		}
		if verifies(d, b1) || verifies(d, queueSecret) {
			t.Errorf("%s: verifies with tenant-b's or the queue's secret", name)
		}
	}
	if d := find(own, noTenant); !verifies(d, queueSecret) || verifies(d, a1, a2, b1) {
		t.Error("the job without a tenant is not signed with the queue's secret alone")
	}
	st, err := x.Client.Status(ctx, cDefault.ID)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); st.Webhook == nil || st.Webhook.State != "failed"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tenant-c's default webhook: %+v, want failed", st.Webhook)
		}
		if st, err = x.Client.Status(ctx, cDefault.ID); err != nil {
			t.Fatal(err)
		}
	}
	if a := st.Webhook.Attempts; len(a) != 1 || !strings.Contains(a[0].Error, "tenant tenant-c has no webhook signing secret") {
		t.Errorf("tenant-c's delivery log %+v, want one entry saying why it was not sent", a)
	}
	for _, d := range def.deliveries() {
		if d.header.Get("webhook-id") == cDefault.Webhook.ID {
			t.Error("tenant-c's default webhook was sent")
		}
	}
}

// Webhook URLs whose host is an IP address in another spelling than a
// dotted quad or a bracketed IPv6 address are refused at enqueue, naming
// the field, even where private addresses are allowed (as on the e2e
// worker); canonical ones are not.
func TestWebhookIPSpellingsRefusedAtEnqueue(t *testing.T) {
	ctx := context.Background()
	// Begin, not Enqueue: nothing runs or is delivered even if one passes.
	for _, host := range []string{"2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001", "[::1%25lo]", "[fe80::1%25lo]", "127.0.0.1."} {
		d, _, err := env.client.Begin(ctx, jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: "http://" + host + ":8080/hook"})
		if d != nil {
			d.Abort(ctx)
		}
		var fe *jobs.FieldError
		if !errors.As(err, &fe) || fe.Field != "webhook" {
			t.Errorf("%s: %v, want a refusal naming the webhook field", host, err)
		}
	}
	for _, host := range []string{"127.0.0.1", "[::1]"} {
		d, _, err := env.client.Begin(ctx, jobs.Submission{Script: file(t, "x.sh", "true"), Webhook: "http://" + host + ":8080/hook"})
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		d.Abort(ctx)
	}
}
