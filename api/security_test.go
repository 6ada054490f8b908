package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
)

// Hostile requests against the API: each test is one finding of the
// security review (issue 13), as an attacker holding a tenant's token or a
// browser on an operator's machine would try it.

// doRaw is fixture.do for other goroutines: no t.Fatal.
func (f *fixture) doRaw(method, path, token string, body io.Reader, contentType string, header http.Header) (answer, error) {
	req, err := http.NewRequest(method, f.url+path, body)
	if err != nil {
		return answer{}, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}, err
}

// openMembers is a tenant's set of unfinished jobs.
func (f *fixture) openMembers(t *testing.T, tenant string) []string {
	t.Helper()
	m, err := f.rdb.SMembers(context.Background(), keys.TenantOpen(tenant)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestIdempotencyKeyRaceAcrossTenants is the reported attack: tenant beta
// starts a submission with a key and holds its body open; tenant acme
// submits with the same key; beta finishes its body. beta must get a job
// of its own, and nothing of acme's.
func TestIdempotencyKeyRaceAcrossTenants(t *testing.T) {
	f := newFixture(t)
	key := "report-" + jobs.NewJobID()
	before := f.openMembers(t, "beta")

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	answered := make(chan answer, 1)
	failed := make(chan error, 1)
	go func() {
		a, err := f.doRaw("POST", "/v1/jobs", tokens["beta"], pr, mw.FormDataContentType(), nil)
		if err != nil {
			failed <- err
			return
		}
		answered <- a
	}()
	mw.WriteField("spec", `{"idempotency_key":"`+key+`"}`)
	w, err := mw.CreateFormFile("script", "b.sh")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "echo beta")
	// beta's submission has begun once its job holds a place among beta's
	// unfinished jobs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if now := f.openMembers(t, "beta"); len(now) > len(before) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("beta's submission did not begin")
		}
		time.Sleep(20 * time.Millisecond)
	}

	a := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"`+key+`"}`), script("a.sh", "echo acme secret"))
	if a.code != 201 {
		t.Fatalf("acme's submission: %d %s", a.code, a.body)
	}
	acmeJob := a.job(t)

	io.WriteString(w, " done\n")
	mw.Close()
	pw.Close()
	var b answer
	select {
	case b = <-answered:
	case err := <-failed:
		t.Fatal(err)
	case <-time.After(20 * time.Second):
		t.Fatal("beta's submission got no answer")
	}
	if b.code != 201 {
		t.Fatalf("beta's submission finished after acme's with the same key: %d, want 201 and a job of its own:\n%s", b.code, b.body)
	}
	bj := b.job(t)
	if bj.ID == acmeJob.ID || bj.Tenant != "beta" || bj.Existing || strings.Contains(string(b.body), acmeJob.ID) || strings.Contains(string(b.body), "acme") {
		t.Fatalf("beta's answer shows acme's job (acme's is %s):\n%s", acmeJob.ID, b.body)
	}
	// Both jobs are there, each its tenant's, each with its own script.
	for _, c := range []struct{ tenant, id string }{{"acme", acmeJob.ID}, {"beta", bj.ID}} {
		g := f.do(t, "GET", "/v1/jobs/"+c.id, tokens[c.tenant], nil, "")
		if g.code != 200 || g.job(t).Tenant != c.tenant {
			t.Errorf("%s's job %s: %d %s", c.tenant, c.id, g.code, g.body)
		}
	}
	// Each submission's files are under its own job.
	for _, c := range []struct{ id, name string }{{acmeJob.ID, "a.sh"}, {bj.ID, "b.sh"}} {
		objs, _ := f.store.List(context.Background(), jobs.JobPrefix(c.id))
		if len(objs) != 1 || !strings.HasSuffix(objs[0], "/"+c.name) {
			t.Errorf("files of %s: %v, want only %s", c.id, objs, c.name)
		}
	}
}

// TestIdempotencyKeyRevealsNothing: a key another tenant used answers
// exactly like a fresh key: a new job of the caller's own.
func TestIdempotencyKeyRevealsNothing(t *testing.T) {
	f := newFixture(t)
	key := "nightly-" + jobs.NewJobID()
	first := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"`+key+`"}`), script("a.sh", "true"))
	if first.code != 201 {
		t.Fatalf("acme: %d %s", first.code, first.body)
	}
	acmeID := first.job(t).ID
	used := f.submit(t, tokens["beta"], spec(`{"idempotency_key":"`+key+`"}`), script("a.sh", "true"))
	fresh := f.submit(t, tokens["beta"], spec(`{"idempotency_key":"fresh-`+key+`"}`), script("a.sh", "true"))
	if used.code != fresh.code || used.code != 201 {
		t.Fatalf("beta with acme's key: %d %s\nbeta with a fresh key: %d %s", used.code, used.body, fresh.code, fresh.body)
	}
	if j := used.job(t); j.ID == acmeID || j.Tenant != "beta" || j.Existing || strings.Contains(string(used.body), acmeID) {
		t.Errorf("beta with acme's key: %s", used.body)
	}
	// Both keys keep working for their own tenants.
	if again := f.submit(t, tokens["beta"], spec(`{"idempotency_key":"`+key+`"}`), script("a.sh", "true")); again.code != 200 || again.job(t).ID != used.job(t).ID {
		t.Errorf("beta again: %d %s", again.code, again.body)
	}
	if again := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"`+key+`"}`), script("a.sh", "true")); again.code != 200 || again.job(t).ID != acmeID {
		t.Errorf("acme again: %d %s", again.code, again.body)
	}
}

// TestListShowsOnlyOwnJobs: an entry of a tenant's job index whose task
// now belongs to another tenant (an ID reused after the task's retention
// ended; the index outlives it) is neither listed nor kept.
func TestListShowsOnlyOwnJobs(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.submit(t, tokens["beta"], script("b.sh", "echo beta's"))
	if b.code != 201 {
		t.Fatalf("beta: %d %s", b.code, b.body)
	}
	betaID := b.job(t).ID
	member := "default " + betaID
	score := float64(time.Now().UnixMilli()*1000 + 999)
	if err := f.rdb.ZAdd(ctx, keys.TenantJobs("acme"), redis.Z{Score: score, Member: member}).Err(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"", "?state=pending", "?queue=default", "?limit=1"} {
		a := f.do(t, "GET", "/v1/jobs"+q, tokens["acme"], nil, "")
		if a.code != 200 || strings.Contains(string(a.body), betaID) {
			t.Errorf("acme's list%s shows beta's job %s: %d %s", q, betaID, a.code, a.body)
		}
	}
	if _, err := f.rdb.ZScore(ctx, keys.TenantJobs("acme"), member).Result(); err != redis.Nil {
		t.Errorf("acme's index still holds beta's job: %v", err)
	}
	// beta still lists it.
	if a := f.do(t, "GET", "/v1/jobs", tokens["beta"], nil, ""); a.code != 200 || !strings.Contains(string(a.body), betaID) {
		t.Errorf("beta's list lacks its job: %d %s", a.code, a.body)
	}
}

// TestControlCharactersInFileNames: a multipart file name holding NUL, CR,
// LF or ESC is a 400 naming the field, like every other bad name, and
// leaves nothing behind.
func TestControlCharactersInFileNames(t *testing.T) {
	f := newFixture(t)
	before := f.state(t)
	for _, c := range []string{"\x00", "\r", "\n", "\r\n", "\x1b", "\x7f"} {
		for _, p := range []struct{ part, field string }{{"script", "script"}, {"input", "inputs"}} {
			t.Run(fmt.Sprintf("%q in %s", c, p.part), func(t *testing.T) {
				var b bytes.Buffer
				b.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{}\r\n")
				if p.part == "input" {
					b.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"script\"; filename=\"a.sh\"\r\n\r\ntrue\r\n")
				}
				b.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"" + p.part + "\"; filename=\"x" + c + "y.sh\"\r\nContent-Type: application/octet-stream\r\n\r\nxx\r\n--XYZ--\r\n")
				a := f.do(t, "POST", "/v1/jobs", tokens["acme"], &b, "multipart/form-data; boundary=XYZ")
				if a.code != 400 {
					t.Fatalf("status %d, want 400: %s", a.code, a.body)
				}
				if e := a.err(t); e.Field != p.field || !strings.Contains(e.Message, "control character") {
					t.Errorf("error %+v, want field %q and the reason", e, p.field)
				}
			})
		}
	}
	if after := f.state(t); after != before {
		t.Errorf("refused names left something:\n%s\n%s", before, after)
	}
}

// dashQueue is a queue holding one task, for the dashboard tests.
func dashQueue(t *testing.T, f *fixture) (string, *asynq.Inspector) {
	t.Helper()
	q := "dash-" + strings.ReplaceAll(jobs.NewJobID()[:8], "-", "")
	c := asynq.NewClientFromRedisClient(f.rdb)
	if _, err := c.Enqueue(asynq.NewTask("job:run", []byte(`{}`)), asynq.Queue(q)); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(f.rdb)
	t.Cleanup(func() { insp.DeleteQueue(q, true) })
	return q, insp
}

func paused(t *testing.T, insp *asynq.Inspector, q string) bool {
	t.Helper()
	info, err := insp.GetQueueInfo(q)
	if err != nil {
		t.Fatal(err)
	}
	return info.Paused
}

// TestDashboardHostAndOrigin: the dashboard answers only the host names it
// is configured for (DNS rebinding), and refuses cross-site requests that
// change state, which browsers send with cached basic-auth credentials.
func TestDashboardHostAndOrigin(t *testing.T) {
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprintf("open=%v", open), func(t *testing.T) {
			f := serve(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), open)
			q, insp := dashQueue(t, f)
			host := strings.TrimPrefix(f.url, "http://")
			creds := func(h http.Header) http.Header {
				if h == nil {
					h = http.Header{}
				}
				h.Set("Authorization", "Basic "+basic("ops", tokens["acme"]))
				return h
			}
			req := func(method, path string, h http.Header, hostHeader string) answer {
				t.Helper()
				r, err := http.NewRequest(method, f.url+path, nil)
				if err != nil {
					t.Fatal(err)
				}
				r.Header = h
				if hostHeader != "" {
					r.Host = hostHeader
				}
				resp, err := http.DefaultClient.Do(r)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return answer{resp.StatusCode, resp.Header, b}
			}
			// A rebound name, with or without credentials: refused, and no
			// task payload in the answer.
			for _, h := range []http.Header{nil, creds(nil)} {
				if a := req("GET", "/monitoring/api/queues/"+q+"/pending_tasks", h, "evil.example"); a.code < 400 || strings.Contains(string(a.body), "job:run") {
					t.Errorf("Host: evil.example: %d %.300s", a.code, a.body)
				}
				if a := req("GET", "/monitoring/", h, "evil.example:"+strings.Split(host, ":")[1]); a.code < 400 {
					t.Errorf("Host: evil.example with the port: %d", a.code)
				}
			}
			// Cross-site state changes: refused, the queue stays as it was.
			for name, h := range map[string]http.Header{
				"cross origin":         {"Origin": {"http://evil.example"}},
				"cross origin, null":   {"Origin": {"null"}},
				"sec-fetch cross-site": {"Sec-Fetch-Site": {"cross-site"}},
				"sec-fetch same-site":  {"Sec-Fetch-Site": {"same-site"}, "Origin": {"http://sub." + host}},
			} {
				if a := req("POST", "/monitoring/api/queues/"+q+":pause", creds(h), ""); a.code != 403 {
					t.Errorf("%s POST pause: %d %s", name, a.code, a.body)
				}
				if paused(t, insp, q) {
					t.Fatalf("%s POST paused the queue", name)
				}
			}
			// The same origin, with an operator's credentials: it works.
			same := creds(http.Header{"Origin": {f.url}, "Sec-Fetch-Site": {"same-origin"}})
			if a := req("POST", "/monitoring/api/queues/"+q+":pause", same, ""); a.code >= 300 || !paused(t, insp, q) {
				t.Fatalf("same-origin POST pause: %d %s", a.code, a.body)
			}
			if a := req("POST", "/monitoring/api/queues/"+q+":resume", creds(nil), ""); a.code >= 300 || paused(t, insp, q) {
				t.Fatalf("POST resume without Origin (curl): %d %s", a.code, a.body)
			}
		})
	}
}

func basic(user, pass string) string {
	r, _ := http.NewRequest("GET", "http://x/", nil)
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

// plantJob puts a job:run task of owner under id in queue, as a hash
// collision or a hand-made task would: the one way, now that a key's ID
// holds its tenant, that a key's ID can be held by someone else's job.
func plantJob(t *testing.T, f *fixture, queue, id, owner, marker string) {
	t.Helper()
	payload, _ := json.Marshal(map[string]any{
		"id": id, "queue": queue, "tenant": owner, "timeout_seconds": 60, "runtime": "bash",
		"script": map[string]any{"name": "x.sh", "key": "jobs/" + id + "/in-x/script/x.sh"},
		"env":    map[string]string{"SECRET": marker}, "webhook": "https://" + marker + ".example/hook",
	})
	c := asynq.NewClientFromRedisClient(f.rdb)
	if _, err := c.Enqueue(asynq.NewTask(jobs.TypeRun, payload), asynq.TaskID(id), asynq.Queue(queue)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { asynq.NewInspectorFromRedisClient(f.rdb).DeleteTask(queue, id) })
}

// TestIdempotencyKeyHeldByAnotherOwner: a key whose job ID is held by a
// job that is not the caller's is refused the same generic way at Begin
// (the key's ID is taken before the submission starts) and at Commit (it
// is taken while the body uploads), and the answer holds nothing of that
// job; the refused submission leaves nothing.
func TestIdempotencyKeyHeldByAnotherOwner(t *testing.T) {
	f := newFixture(t)
	marker := "planted" + strings.ReplaceAll(jobs.NewJobID()[:8], "-", "")
	check := func(t *testing.T, a answer) {
		t.Helper()
		if a.code == 200 || a.code == 201 || strings.Contains(string(a.body), marker) || strings.Contains(string(a.body), "acme") {
			t.Fatalf("a key held by acme's job, submitted by beta: %d %s", a.code, a.body)
		}
		if e := a.err(t); a.code != 409 || e.Code != "idempotency_key_unavailable" || e.Field != "idempotency_key" || !strings.Contains(e.Message, "another key") {
			t.Errorf("refusal %d %+v, want the generic 409 naming the key", a.code, e)
		}
	}
	t.Run("at begin", func(t *testing.T) {
		key := "held-" + jobs.NewJobID()
		plantJob(t, f, "default", jobs.IdempotentJobID("beta", "default", key), "acme", marker)
		before := f.state(t)
		check(t, f.submit(t, tokens["beta"], spec(`{"idempotency_key":"`+key+`"}`), script("b.sh", "true"), input("in.csv", "1")))
		if after := f.state(t); after != before {
			t.Errorf("the refusal left something:\n%s\n%s", before, after)
		}
	})
	t.Run("at commit", func(t *testing.T) {
		key := "held-" + jobs.NewJobID()
		id := jobs.IdempotentJobID("beta", "default", key)
		before := f.openMembers(t, "beta")
		pr, pw := io.Pipe()
		mw := multipart.NewWriter(pw)
		answered := make(chan answer, 1)
		go func() {
			a, _ := f.doRaw("POST", "/v1/jobs", tokens["beta"], pr, mw.FormDataContentType(), nil)
			answered <- a
		}()
		mw.WriteField("spec", `{"idempotency_key":"`+key+`"}`)
		w, _ := mw.CreateFormFile("script", "b.sh")
		io.WriteString(w, "echo beta")
		for deadline := time.Now().Add(10 * time.Second); !slices.Contains(f.openMembers(t, "beta"), "default "+id); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("beta's submission did not begin")
			}
		}
		plantJob(t, f, "default", id, "acme", marker)
		mw.Close()
		pw.Close()
		check(t, <-answered)
		if objs, _ := f.store.List(context.Background(), jobs.JobPrefix(id)); len(objs) != 0 {
			t.Errorf("the refused submission's files stay: %v", objs)
		}
		if now := f.openMembers(t, "beta"); !slices.Equal(sorted(now), sorted(before)) {
			t.Errorf("beta's unfinished jobs %v, were %v", now, before)
		}
	})
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// stream opens an event stream and reads its first event; close ends it.
func (f *fixture) stream(t *testing.T, token, id string) (answer, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/jobs/"+id+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return answer{resp.StatusCode, resp.Header, b}, func() {}
	}
	closeIt := func() {
		cancel()
		resp.Body.Close()
	}
	// Closed before the server is (httptest waits for open streams).
	t.Cleanup(closeIt)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "id: 0") {
		t.Fatalf("first line of the stream: %q %v", line, err)
	}
	return answer{code: 200, header: resp.Header}, closeIt
}

// TestEventStreamCap: a tenant has at most max_streams event streams open
// across every API server (the count is in Redis); the next is 429 with
// Retry-After, while other tenants still connect; a stream that ends gives
// its place back.
func TestEventStreamCap(t *testing.T) {
	testenv.Long(t, "holds event streams open for seconds")
	f := newFixture(t)
	other := newFixture(t) // a second API server on the same Redis
	a := f.submit(t, tokens["streamy"], script("s.sh", "true"))
	b := f.submit(t, tokens["beta"], script("s.sh", "true"))
	if a.code != 201 || b.code != 201 {
		t.Fatalf("submit: %d %s / %d %s", a.code, a.body, b.code, b.body)
	}
	id, betaID := a.job(t).ID, b.job(t).ID
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for i, srv := range []*fixture{f, other} {
		ans, closeIt := srv.stream(t, tokens["streamy"], id)
		if ans.code != 200 {
			t.Fatalf("stream %d: %d %s", i+1, ans.code, ans.body)
		}
		closers = append(closers, closeIt)
	}
	for _, srv := range []*fixture{f, other} {
		ans, _ := srv.stream(t, tokens["streamy"], id)
		if ans.code != 429 || ans.header.Get("Retry-After") == "" {
			t.Fatalf("a third stream: %d %s (Retry-After %q), want 429", ans.code, ans.body, ans.header.Get("Retry-After"))
		}
		if e := ans.err(t); e.Code != "too_many_streams" || !strings.Contains(e.Message, "streamy") || !strings.Contains(e.Message, "2 event streams") {
			t.Errorf("refusal %+v", e)
		}
	}
	// Another tenant is not held back by streamy's cap.
	ans, closeBeta := f.stream(t, tokens["beta"], betaID)
	if ans.code != 200 {
		t.Fatalf("beta's stream while streamy is at its cap: %d %s", ans.code, ans.body)
	}
	closeBeta()
	// A stream that ends gives its place back.
	closers[0]()
	closers = closers[1:]
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ans, closeIt := f.stream(t, tokens["streamy"], id)
		if ans.code == 200 {
			closers = append(closers, closeIt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream's place was not given back: %d %s", ans.code, ans.body)
		}
	}
	// The Go client (the CLI's --wait) at the cap waits as the server says
	// and follows the stream once a place is free.
	c, err := NewClient(f.url, tokens["streamy"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	states := make(chan jobs.State, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go c.Wait(ctx, id, func(st *jobs.JobStatus) { states <- st.State })
	select {
	case st := <-states:
		t.Fatalf("a stream past the cap was followed: %s", st)
	case <-time.After(time.Second):
	}
	closers[0]()
	select {
	case st := <-states:
		if st != jobs.StatePending {
			t.Errorf("first state %s", st)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the client did not follow the stream once a place was free")
	}
}

// rawRequest sends a request's head and the start of its body by hand, and
// returns the connection.
func rawRequest(t *testing.T, f *fixture, head string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSlowBodiesAreCut: a body that stalls is cut after the idle timeout,
// a body that trickles (never idle for long) at the total body timeout;
// each gets 408 and leaves nothing. A body that keeps up is not cut.
func TestSlowBodiesAreCut(t *testing.T) {
	testenv.Long(t, "waits out the body timeouts")
	f := serveWith(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), func(c *Config) {
		c.Timeouts = Timeouts{BodyIdle: 500 * time.Millisecond, Body: 2 * time.Second}
	})
	head := func(length int) string {
		return fmt.Sprintf("POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: %d\r\n\r\n"+
			"--XYZ\r\nContent-Disposition: form-data; name=\"script\"; filename=\"a.sh\"\r\n\r\n", tokens["acme"], length)
	}
	expect408 := func(t *testing.T, c net.Conn, started time.Time, atLeast, atMost time.Duration, why string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(atMost + 5*time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(started)
		var eb struct{ Error Error }
		json.Unmarshal(b, &eb)
		if resp.StatusCode != 408 || eb.Error.Code != "request_timeout" || !strings.Contains(eb.Error.Message, why) {
			t.Errorf("answer %d %s, want 408 request_timeout saying %q", resp.StatusCode, b, why)
		}
		// Not before its timer (the message says which one fired); the
		// upper bound only catches a timer that never fires.
		if took < atLeast || took > 30*time.Second {
			t.Errorf("cut after %s, want at least %s", took, atLeast)
		}
	}
	before := f.state(t)
	t.Run("stalled", func(t *testing.T) {
		start := time.Now()
		c := rawRequest(t, f, head(100000)+"echo")
		expect408(t, c, start, 400*time.Millisecond, 1900*time.Millisecond, "no byte of the request body arrived for 500ms")
	})
	t.Run("trickling", func(t *testing.T) {
		start := time.Now()
		c := rawRequest(t, f, head(100000))
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					if _, err := c.Write([]byte("#")); err != nil {
						return
					}
				}
			}
		}()
		expect408(t, c, start, 1900*time.Millisecond, 4*time.Second, "did not arrive in full within 2s")
	})
	if after := f.state(t); after != before {
		t.Errorf("cut requests left something:\n%s\n%s", before, after)
	}
	// A body that arrives in time is served as ever, on the same settings,
	// also when the server takes its time after the body.
	if a := f.submit(t, tokens["acme"], script("ok.sh", "true"), input("in.csv", strings.Repeat("x", 200<<10))); a.code != 201 {
		t.Errorf("a normal submission: %d %s", a.code, a.body)
	}
}

// TestSlowReaderIsCut: a client that does not read a response is cut after
// the write timeout instead of holding the server's goroutine and buffers.
func TestSlowReaderIsCut(t *testing.T) {
	f := serveWith(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), func(c *Config) {
		c.Timeouts = Timeouts{Write: 500 * time.Millisecond}
	})
	const size = 64 << 20
	wrote := make(chan error, 1)
	f.srv.mux.HandleFunc("GET /test/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		var err error
		for n := 0; n < size && err == nil; n += len(chunk) {
			_, err = w.Write(chunk)
		}
		wrote <- err
	})
	c := rawRequest(t, f, "GET /test/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("64 MiB written to a client that reads nothing")
		}
		t.Logf("the response was cut: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a response to a client that reads nothing was not cut after the write timeout")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := io.Copy(io.Discard, c)
	if n >= size {
		t.Errorf("the client got all %d bytes", n)
	}
}

// TestOpenDashboardOnlyForThisHost: an open dashboard still takes a token
// from a client elsewhere, or from one behind a proxy on this host; its
// pages may not be framed.
func TestOpenDashboardOnlyForThisHost(t *testing.T) {
	f := serve(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), true)
	get := func(remote string, h http.Header) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "http://127.0.0.1:8080/monitoring/api/queues", nil)
		r.RemoteAddr = remote
		for k, v := range h {
			r.Header[k] = v
		}
		w := httptest.NewRecorder()
		f.srv.ServeHTTP(w, r)
		return w
	}
	if w := get("127.0.0.1:50000", nil); w.Code != 200 || w.Header().Get("X-Frame-Options") != "DENY" || !strings.Contains(w.Header().Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("a local client: %d, headers %v", w.Code, w.Header())
	}
	if w := get("[::1]:50000", nil); w.Code != 200 {
		t.Errorf("a local client over IPv6: %d", w.Code)
	}
	for name, c := range map[string]struct {
		remote string
		h      http.Header
	}{
		"another host":           {"192.0.2.7:50000", nil},
		"through a proxy (XFF)":  {"127.0.0.1:50000", http.Header{"X-Forwarded-For": {"192.0.2.7"}}},
		"through a proxy (7239)": {"127.0.0.1:50000", http.Header{"Forwarded": {"for=192.0.2.7"}}},
		"through a proxy (real)": {"127.0.0.1:50000", http.Header{"X-Real-Ip": {"192.0.2.7"}}},
	} {
		if w := get(c.remote, c.h); w.Code != 401 || w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d %s", name, w.Code, w.Body)
		}
		h := http.Header{"Authorization": {"Bearer " + tokens["acme"]}}
		for k, v := range c.h {
			h[k] = v
		}
		if w := get(c.remote, h); w.Code != 200 {
			t.Errorf("%s with an operator token: %d %s", name, w.Code, w.Body)
		}
	}
}

func TestHostNames(t *testing.T) {
	hs, err := parseHosts([]string{"sandq.example.com", "ops.example.com:8443", "10.0.0.5:8080", "[::1]:9000", "::2", "Upper.Example.COM."})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"sandq.example.com": true, "sandq.example.com:80": true, "SANDQ.EXAMPLE.COM.:443": true,
		"ops.example.com:8443": true, "ops.example.com": false, "ops.example.com:8444": false,
		"10.0.0.5:8080": true, "10.0.0.5": false, "[::1]:9000": true, "[0:0:0:0:0:0:0:1]:9000": true, "[::1]:9001": false,
		"[::2]": true, "[::2]:1": true, "upper.example.com": true,
		"evil.example": false, "": false, "sandq.example.com:0": false, "sandq.example.com:x": false,
		"sandq.example.com.evil.example": false, "127.0.0.1:8080": false, "[::1": false, "a b": false,
	} {
		if got := hs.allows(host); got != want {
			t.Errorf("allows(%q) = %v, want %v", host, got, want)
		}
	}
	def, _ := parseHosts(nil)
	for host, want := range map[string]bool{"localhost:8080": true, "127.0.0.1:1": true, "[::1]:2": true, "localhost": true, "evil.example:8080": false, "127.0.0.2:8080": false} {
		if got := def.allows(host); got != want {
			t.Errorf("default allows(%q) = %v, want %v", host, got, want)
		}
	}
	for _, bad := range []string{"", "a b", "x/y", "http://x", "x:0", "x:65536", "[::1]:", "fe80::1%eth0", "-x.example"} {
		if _, err := parseHosts([]string{bad}); err == nil {
			t.Errorf("parseHosts(%q) accepted", bad)
		}
	}
	got := DefaultHosts("127.0.0.1:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080})
	for _, want := range []string{"localhost", "127.0.0.1", "[::1]", "127.0.0.1:8080"} {
		if !slices.Contains(got, want) {
			t.Errorf("DefaultHosts = %v, lacks %s", got, want)
		}
	}
	got = DefaultHosts("sandq.internal:8080", &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 8080})
	for _, want := range []string{"sandq.internal:8080", "10.1.2.3:8080", "localhost"} {
		if !slices.Contains(got, want) {
			t.Errorf("DefaultHosts = %v, lacks %s", got, want)
		}
	}
	if err := CheckHosts(got); err != nil {
		t.Error(err)
	}
}

func TestConfigRefusals(t *testing.T) {
	cfg := jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr)
	store := newFixture(t).store
	for name, tc := range map[string]struct {
		c    Config
		says string
	}{
		"bad host":             {Config{Hosts: []string{"a b"}}, "a b"},
		"negative timeout":     {Config{Timeouts: Timeouts{BodyIdle: -time.Second}}, "body idle timeout -1s is negative"},
		"body over 2h":         {Config{Timeouts: Timeouts{Body: 3 * time.Hour}}, "body timeout 3h0m0s is over the maximum"},
		"idle over body":       {Config{Timeouts: Timeouts{BodyIdle: time.Hour, Body: time.Minute}}, "over the body timeout"},
		"negative write":       {Config{Timeouts: Timeouts{Write: -1}}, "write timeout -1ns is negative"},
		"negative stream out":  {Config{Timeouts: Timeouts{StreamWrite: -1}}, "stream write timeout -1ns is negative"},
		"stream write over 1m": {Config{Timeouts: Timeouts{StreamWrite: 2 * time.Minute}}, "stream write timeout 2m0s is over the maximum of 1m0s"},
	} {
		c := tc.c
		c.Jobs, c.Store = cfg, store
		s, err := New(c)
		if err == nil {
			s.Close()
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: refused with %q, want it to say %q", name, err, tc.says)
		}
	}
}
