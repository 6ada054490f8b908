package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv/sandqtest"
	"github.com/sandq/sandq/jobs"
)

// apiServer serves the job API over the e2e stack, with one tenant "e2e"
// that may use the worker's queues; it returns the URL and the token.
func apiServer(t *testing.T) (string, string) {
	t.Helper()
	url, toks := apiServerFor(t, "e2e")
	return url, toks["e2e"]
}

// apiServerFor serves the job API with the given tenants, each of which may
// use the worker's queues; it returns the URL and each tenant's token.
func apiServerFor(t *testing.T, tenants ...string) (string, map[string]string) {
	t.Helper()
	all := map[string]api.Tenant{}
	for _, tenant := range tenants {
		all[tenant] = api.Tenant{Queues: []string{"default", "other"}}
	}
	return sandqtest.API(t, env.cfg, env.store, nil, all)
}

// TestAPIIdempotencyKeyAcrossTenants is the reported cross-tenant leak, end
// to end: tenant bravo starts a submission with a predictable key and
// holds its body open; tenant alpha submits with the same key, and its job
// runs to the end with output; bravo then finishes its body. bravo gets a
// job of its own, which runs bravo's script, and nothing of alpha's: not
// its ID, stdout or output links.
func TestAPIIdempotencyKeyAcrossTenants(t *testing.T) {
	url, toks := apiServerFor(t, "alpha", "bravo")
	key := "report-2026-11-26-" + jobs.NewJobID()[:8]
	secret := "alpha-secret-" + jobs.NewJobID()[:8]
	rdb := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	defer rdb.Close()
	post := func(tok string, body io.Reader, ct string) (int, []byte, error) {
		req, _ := http.NewRequest("POST", url+"/v1/jobs", body)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	getJob := func(tok, id string) api.Job {
		req, _ := http.NewRequest("GET", url+"/v1/jobs/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var j api.Job
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || json.Unmarshal(b, &j) != nil || j.JobStatus == nil {
			t.Fatalf("GET %s: %d %s", id, resp.StatusCode, b)
		}
		return j
	}
	waitDone := func(tok, id string) api.Job {
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if j := getJob(tok, id); j.State == jobs.StateDone {
				return j
			}
		}
		t.Fatalf("job %s did not finish", id)
		return api.Job{}
	}

	// bravo begins and holds its body open.
	pr, pw := io.Pipe()
	bravo := multipart.NewWriter(pw)
	type reply struct {
		code int
		body []byte
		err  error
	}
	replied := make(chan reply, 1)
	go func() {
		code, b, err := post(toks["bravo"], pr, bravo.FormDataContentType())
		replied <- reply{code, b, err}
	}()
	bravo.WriteField("spec", `{"idempotency_key":"`+key+`","limits":{"timeout_seconds":60}}`)
	w, _ := bravo.CreateFormFile("script", "b.sh")
	io.WriteString(w, "echo bravo-own")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if n, _ := rdb.SCard(context.Background(), keys.TenantOpen("bravo")).Result(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bravo's submission did not begin")
		}
	}

	// alpha submits with the key; its job runs to the end.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("spec", `{"idempotency_key":"`+key+`","limits":{"timeout_seconds":60}}`)
	aw, _ := mw.CreateFormFile("script", "a.sh")
	io.WriteString(aw, "echo "+secret+"; echo "+secret+" > /mnt/outputs/secret.txt\n")
	mw.Close()
	code, b, err := post(toks["alpha"], &body, mw.FormDataContentType())
	var alphaJob api.Job
	if err != nil || code != 201 || json.Unmarshal(b, &alphaJob) != nil || alphaJob.JobStatus == nil {
		t.Fatalf("alpha's submission: %d %s %v", code, b, err)
	}
	done := waitDone(toks["alpha"], alphaJob.ID)
	if done.Result == nil || done.Result.Status != jobs.StatusSucceeded || len(done.Result.Outputs) != 1 || !strings.Contains(done.Result.Stdout.Tail, secret) {
		t.Fatalf("alpha's job: %+v", done.Result)
	}

	// bravo finishes its body.
	io.WriteString(w, "\n")
	bravo.Close()
	pw.Close()
	r := <-replied
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, leak := range []string{alphaJob.ID, secret, done.Result.Outputs[0].URL, "alpha"} {
		if strings.Contains(string(r.body), leak) {
			t.Fatalf("bravo's answer holds alpha's %q: %d %s", leak, r.code, r.body)
		}
	}
	var bravoJob api.Job
	if r.code != 201 || json.Unmarshal(r.body, &bravoJob) != nil || bravoJob.JobStatus == nil || bravoJob.Tenant != "bravo" || bravoJob.Existing {
		t.Fatalf("bravo's submission: %d %s, want 201 and a job of its own", r.code, r.body)
	}
	got := waitDone(toks["bravo"], bravoJob.ID)
	if got.Result == nil || got.Result.Status != jobs.StatusSucceeded || !strings.Contains(got.Result.Stdout.Tail, "bravo-own") || strings.Contains(got.Result.Stdout.Tail, secret) {
		t.Errorf("bravo's job ran something else: %+v", got.Result)
	}
}

// TestAPIMultipartEventsResult submits a job as `curl -F` would, follows its
// Server-Sent Events to the end, and downloads its output by the result's
// link; a repeated idempotency key returns the same job; the server's
// /metrics counts the requests.
func TestAPIMultipartEventsResult(t *testing.T) {
	url, tok := apiServer(t)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("spec", `{"args":["7"],"idempotency_key":"api-e2e-`+jobs.NewJobID()+`","limits":{"timeout_seconds":60}}`)
	w, _ := mw.CreateFormFile("script", "triple.py")
	io.WriteString(w, "import sys\nn = int(open('/mnt/inputs/n.txt').read()) * int(sys.argv[1])\nopen('/mnt/outputs/out.txt', 'w').write(str(n))\nprint('wrote', n)\n")
	w, _ = mw.CreateFormFile("input", "n.txt")
	io.WriteString(w, "6")
	mw.Close()
	submit := func() (int, api.Job) {
		req, _ := http.NewRequest("POST", url+"/v1/jobs", bytes.NewReader(body.Bytes()))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var j api.Job
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &j); err != nil || j.JobStatus == nil {
			t.Fatalf("submit: %d %s", resp.StatusCode, b)
		}
		return resp.StatusCode, j
	}
	code, job := submit()
	if code != 201 {
		t.Fatalf("submit: %d", code)
	}

	req, _ := http.NewRequest("GET", url+"/v1/jobs/"+job.ID+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, ct)
	}
	var events []string
	var final api.Job
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if e, ok := strings.CutPrefix(line, "event: "); ok {
			event = e
			events = append(events, e)
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			var j api.Job
			if err := json.Unmarshal([]byte(d), &j); err != nil {
				t.Fatalf("event data %q: %v", d, err)
			}
			if event == "done" {
				final = j
			}
		}
	}
	if len(events) < 2 || events[0] != "state" || events[len(events)-1] != "done" || final.JobStatus == nil {
		t.Fatalf("events %v", events)
	}
	r := final.Result
	if r == nil || r.Status != jobs.StatusSucceeded || len(r.Outputs) != 1 || !strings.Contains(r.Stdout.Tail, "wrote 42") {
		t.Fatalf("result %+v", r)
	}
	got, err := http.Get(r.Outputs[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(got.Body)
	got.Body.Close()
	if got.StatusCode != 200 || string(b) != "42" {
		t.Errorf("output by its link: %d %q", got.StatusCode, b)
	}
	if code, again := submit(); code != 200 || again.ID != job.ID || !again.Existing || again.Result == nil {
		t.Errorf("repeated key: %d %+v", code, again)
	}
	m, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(m.Body)
	m.Body.Close()
	for _, want := range []string{`sandq_api_requests_total{code="201",method="POST",route="/v1/jobs"} 1`, `sandq_api_requests_total{code="200",method="GET",route="/v1/jobs/{id}/events"} 1`, `asynq_tasks_processed_total{queue="default"}`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}

// TestCLIThroughServer: the CLI with --server and --token enqueues through
// the API and waits on the events stream; status and cancel go there too.
func TestCLIThroughServer(t *testing.T) {
	url, tok := apiServer(t)
	dir := t.TempDir()
	sh := filepath.Join(dir, "hello.sh")
	os.WriteFile(sh, []byte("echo hello from $1 > /mnt/outputs/hello.txt; cat /mnt/inputs/who.txt\n"), 0o644)
	who := filepath.Join(dir, "who.txt")
	os.WriteFile(who, []byte("the API\n"), 0o644)
	out, errOut, code := sandq(t, "enqueue", sh, "--input", who, "--arg", "cli", "--wait", "--json", "--server", url, "--token", tok, "--redis-addr", "127.0.0.1:1")
	if code != 0 {
		t.Fatalf("enqueue --wait through the server: exit %d\n%s\n%s", code, out, errOut)
	}
	var r jobs.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Status != jobs.StatusSucceeded || r.Stdout.Tail != "the API\n" || len(r.Outputs) != 1 {
		t.Fatalf("result %s (%v)", out, err)
	}
	// Status prints the same document.
	st, _, code := sandq(t, "status", r.ID, "--json", "--server", url, "--token", tok)
	if code != 0 || st != out {
		t.Errorf("status --json through the server: exit %d\n%s\nwant\n%s", code, st, out)
	}
	_, errOut, code = sandq(t, "status", r.ID, "--server", url, "--token", "sandq_wrong")
	if code != 2 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong token: exit %d: %s", code, errOut)
	}
	_, errOut, code = sandq(t, "cancel", r.ID, "--server", url, "--token", tok)
	if code != 2 || !strings.Contains(errOut, "already finished") {
		t.Errorf("cancel of a finished job: exit %d: %s", code, errOut)
	}
	_, errOut, code = sandq(t, "enqueue", sh, "--queue", "webhooks", "--server", url, "--token", tok)
	if code != 2 || !strings.Contains(errOut, "queue") {
		t.Errorf("enqueue on a queue the tenant may not use: exit %d: %s", code, errOut)
	}
}
