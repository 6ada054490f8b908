package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/internal/devstack"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// The tests run the server against a real Redis and MinIO (no worker:
// jobs stay queued; e2e runs them). Tenants:
//
//	acme    queues default, reports; operator
//	beta    queue default
//	slow    queue default; 1 request/s, burst 2
//	capped  queue default; at most 2 unfinished jobs
//	streamy queue default; at most 2 open event streams
var (
	tokens  = map[string]string{}
	entries []TokenEntry
)

// services are the package's Redis and MinIO, started by the first test
// that asks for them (stack): without redis-server or minio, those tests
// fail, or are skipped under -short, and the others still run.
var services = &testenv.Shared{Options: testenv.ServicesOptions{AccessKey: "api-test", SecretKey: "api-test-secret"}}

func stack(t testing.TB) *devstack.Stack {
	t.Helper()
	return services.Get(t)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := services.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop Redis and MinIO: %v\n", err)
	}
	os.Exit(code)
}

func authConfig(t *testing.T) *AuthConfig {
	t.Helper()
	cfg := &AuthConfig{Tenants: map[string]Tenant{
		"acme":    {Queues: []string{"default", "reports"}, Operator: true},
		"beta":    {Queues: []string{"default"}},
		"slow":    {Queues: []string{"default"}, RatePerSecond: 1, Burst: 2},
		"capped":  {Queues: []string{"default"}, MaxPending: 2},
		"streamy": {Queues: []string{"default"}, MaxStreams: 2},
	}}
	for _, tenant := range []string{"acme", "beta", "slow", "capped", "streamy"} {
		if tokens[tenant] == "" {
			tok, entry, err := NewToken(tenant, tenant+"-test")
			if err != nil {
				t.Fatal(err)
			}
			tokens[tenant] = tok
			entries = append(entries, entry)
		}
	}
	cfg.Tokens = slices.Clone(entries)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

type fixture struct {
	srv   *Server
	url   string
	cfg   jobs.Config
	store *storage.Store
	rdb   *redis.Client
}

func jobsConfig(redisAddr, s3 string) jobs.Config {
	return jobs.Config{
		RedisAddr: redisAddr,
		Storage:   storage.Config{Endpoint: s3, AccessKey: "api-test", SecretKey: "api-test-secret", Bucket: "sandq-api"},
		MaxInputs: 3, MaxInputBytes: 1 << 20, MaxInputsTotal: 3 << 19, MaxScriptBytes: 64 << 10,
	}.WithDefaults()
}

// serve starts a server; open is whether /monitoring needs no token (for
// clients on this host).
func serve(t *testing.T, cfg jobs.Config, open bool) *fixture {
	t.Helper()
	return serveWith(t, cfg, func(c *Config) { c.OpenMonitoring = open })
}

// serveWith starts a server whose configuration opt may change.
func serveWith(t *testing.T, cfg jobs.Config, opt func(*Config)) *fixture {
	t.Helper()
	store, err := storage.New(cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.EnsureBucket(context.Background()); err != nil && !strings.Contains(err.Error(), "refused") {
		t.Fatal(err)
	}
	c := Config{Jobs: cfg, Store: store, Auth: authConfig(t)}
	opt(&c)
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr})
	t.Cleanup(func() {
		srv.Close()
		s.Close()
		rdb.Close()
	})
	return &fixture{srv: s, url: srv.URL, cfg: cfg, store: store, rdb: rdb}
}

func newFixture(t *testing.T) *fixture {
	return serve(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), false)
}

type part struct {
	name, filename, body string
}

// multipartBody builds a request body with parts in order; filenames are
// written raw, as a hostile client may.
func multipartBody(t *testing.T, parts []part) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		cd := fmt.Sprintf(`form-data; name=%q`, p.name)
		if p.filename != "" {
			cd += fmt.Sprintf(`; filename=%q`, p.filename)
		}
		h.Set("Content-Disposition", cd)
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, p.body)
	}
	mw.Close()
	return &buf, mw.FormDataContentType()
}

type answer struct {
	code   int
	header http.Header
	body   []byte
}

func (a answer) job(t *testing.T) Job {
	t.Helper()
	var j Job
	if err := json.Unmarshal(a.body, &j); err != nil || j.JobStatus == nil {
		t.Fatalf("not a job (%d): %s", a.code, a.body)
	}
	return j
}

func (a answer) err(t *testing.T) Error {
	t.Helper()
	var eb struct {
		Error Error `json:"error"`
	}
	if err := json.Unmarshal(a.body, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
		t.Fatalf("not an error body (%d): %s", a.code, a.body)
	}
	return eb.Error
}

// do sends a request; only a request that got no answer fails the test
// (a body cut short is returned as far as it came).
func (f *fixture) do(t *testing.T, method, path, token string, body io.Reader, contentType string) answer {
	t.Helper()
	a, err := f.doRaw(method, path, token, body, contentType, nil)
	if err != nil && a.code == 0 {
		t.Fatal(err)
	}
	return a
}

func (f *fixture) submit(t *testing.T, token string, parts ...part) answer {
	t.Helper()
	body, ct := multipartBody(t, parts)
	return f.do(t, "POST", "/v1/jobs", token, body, ct)
}

func script(name, body string) part { return part{"script", name, body} }
func input(name, body string) part  { return part{"input", name, body} }
func spec(js string) part           { return part{"spec", "", js} }

// state is what a refusal must leave unchanged: objects and unfinished
// multipart uploads in the bucket, and Redis's keys other than asynq's
// server bookkeeping and rate-limit counters.
func (f *fixture) state(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	objs, err := f.store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	incomplete, err := f.store.ListIncomplete(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := f.rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, k := range keys {
		if strings.HasPrefix(k, "sandq:ratelimit:") || strings.Contains(k, ":servers") || strings.Contains(k, ":workers") {
			continue
		}
		kv := k
		if typ, _ := f.rdb.Type(ctx, k).Result(); typ == "set" {
			m, _ := f.rdb.SMembers(ctx, k).Result()
			slices.Sort(m)
			kv += fmt.Sprint(m)
		} else if typ == "zset" {
			m, _ := f.rdb.ZRange(ctx, k, 0, -1).Result()
			kv += fmt.Sprint(m)
		} else if typ == "list" {
			m, _ := f.rdb.LRange(ctx, k, 0, -1).Result()
			kv += fmt.Sprint(m)
		}
		kept = append(kept, kv)
	}
	slices.Sort(objs)
	slices.Sort(kept)
	return fmt.Sprintf("objects %v\nincomplete %v\nredis %v", objs, incomplete, kept)
}

func TestSubmitGetListCancel(t *testing.T) {
	f := newFixture(t)
	a := f.submit(t, tokens["acme"], spec(`{"args":["x"],"limits":{"timeout_seconds":30},"queue":"reports"}`),
		script("run.py", "print(1)"), input("data.csv", "a,b\n1,2\n"), input("notes.txt", "n"))
	if a.code != 201 {
		t.Fatalf("submit: %d %s", a.code, a.body)
	}
	j := a.job(t)
	if j.State != jobs.StatePending || j.Queue != "reports" || j.Tenant != "acme" || j.Existing || a.header.Get("Location") != "/v1/jobs/"+j.ID {
		t.Fatalf("submitted job: %+v, Location %q", j.JobStatus, a.header.Get("Location"))
	}
	// The files are in the store, under the job.
	objs, _ := f.store.List(context.Background(), jobs.JobPrefix(j.ID))
	var names []string
	for _, o := range objs {
		names = append(names, o[strings.LastIndex(o, "/")+1:])
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"data.csv", "notes.txt", "run.py"}) {
		t.Errorf("stored files %v", objs)
	}
	if g := f.do(t, "GET", "/v1/jobs/"+j.ID, tokens["acme"], nil, ""); g.code != 200 || g.job(t).ID != j.ID {
		t.Errorf("get: %d %s", g.code, g.body)
	}
	// Another tenant: not found, for get, cancel, events and in its list.
	for _, req := range []struct{ method, path string }{
		{"GET", "/v1/jobs/" + j.ID}, {"POST", "/v1/jobs/" + j.ID + "/cancel"}, {"GET", "/v1/jobs/" + j.ID + "/events"},
	} {
		if g := f.do(t, req.method, req.path, tokens["beta"], nil, ""); g.code != 404 || g.err(t).Code != "not_found" {
			t.Errorf("beta %s %s: %d %s", req.method, req.path, g.code, g.body)
		}
	}
	if g := f.do(t, "GET", "/v1/jobs", tokens["beta"], nil, ""); g.code != 200 || strings.Contains(string(g.body), j.ID) {
		t.Errorf("beta's list shows acme's job: %d %s", g.code, g.body)
	}
	if g := f.do(t, "GET", "/v1/jobs?queue=reports&state=pending", tokens["acme"], nil, ""); g.code != 200 || !strings.Contains(string(g.body), j.ID) {
		t.Errorf("acme's list: %d %s", g.code, g.body)
	}
	if g := f.do(t, "GET", "/v1/jobs?state=done", tokens["acme"], nil, ""); g.code != 200 || strings.Contains(string(g.body), j.ID) {
		t.Errorf("acme's done list shows a pending job: %d %s", g.code, g.body)
	}
	c := f.do(t, "POST", "/v1/jobs/"+j.ID+"/cancel", tokens["acme"], nil, "")
	var cr CancelResponse
	if c.code != 202 || json.Unmarshal(c.body, &cr) != nil || cr.Outcome != jobs.CancelRemoved {
		t.Fatalf("cancel: %d %s", c.code, c.body)
	}
	if objs, _ := f.store.List(context.Background(), jobs.JobPrefix(j.ID)); len(objs) != 0 {
		t.Errorf("a cancelled job's files stay: %v", objs)
	}
	if g := f.do(t, "GET", "/v1/jobs/"+j.ID, tokens["acme"], nil, ""); g.code != 404 {
		t.Errorf("get after cancel: %d %s", g.code, g.body)
	}
	if g := f.do(t, "POST", "/v1/jobs/"+j.ID+"/cancel", tokens["acme"], nil, ""); g.code != 404 {
		t.Errorf("cancel again: %d %s", g.code, g.body)
	}
}

func TestListPages(t *testing.T) {
	f := newFixture(t)
	var ids []string
	for i := range 5 {
		a := f.submit(t, tokens["beta"], script(fmt.Sprintf("p%d.sh", i), "true"))
		if a.code != 201 {
			t.Fatalf("submit %d: %d %s", i, a.code, a.body)
		}
		ids = append(ids, a.job(t).ID)
	}
	var got []string
	cursor := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("the listing does not end")
		}
		a := f.do(t, "GET", "/v1/jobs?limit=2&cursor="+cursor, tokens["beta"], nil, "")
		var l JobList
		if a.code != 200 || json.Unmarshal(a.body, &l) != nil {
			t.Fatalf("list: %d %s", a.code, a.body)
		}
		if len(l.Jobs) > 2 {
			t.Fatalf("page of %d jobs with limit 2", len(l.Jobs))
		}
		for _, j := range l.Jobs {
			if slices.Contains(ids, j.ID) {
				got = append(got, j.ID)
			}
		}
		if l.NextCursor == "" {
			break
		}
		cursor = l.NextCursor
	}
	slices.Reverse(ids) // newest first
	if !slices.Equal(got, ids) {
		t.Errorf("listed %v, want %v", got, ids)
	}
	for _, q := range []string{"limit=0", "limit=501", "limit=x", "state=gone", "cursor=abc", "queue=bad/queue"} {
		if a := f.do(t, "GET", "/v1/jobs?"+q, tokens["beta"], nil, ""); a.code != 400 {
			t.Errorf("list ?%s: %d %s", q, a.code, a.body)
		}
	}
}

func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t)
	first := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"nightly-2026-11-26"}`), script("a.sh", "true"))
	if first.code != 201 {
		t.Fatalf("first: %d %s", first.code, first.body)
	}
	before := f.state(t)
	again := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"nightly-2026-11-26"}`), script("a.sh", "echo other"))
	if again.code != 200 || again.job(t).ID != first.job(t).ID || !again.job(t).Existing {
		t.Fatalf("again: %d %s", again.code, again.body)
	}
	if after := f.state(t); after != before {
		t.Errorf("a repeated key left something:\n%s\n%s", before, after)
	}
	// A job queued by a submission that failed before it could list it
	// (Redis failing over after the enqueue) is listed when its key is
	// submitted again.
	member := "default " + first.job(t).ID
	if n, err := f.rdb.ZRem(context.Background(), keys.TenantJobs("acme"), member).Result(); err != nil || n != 1 {
		t.Fatalf("unlisting the job: %d %v", n, err)
	}
	if again := f.submit(t, tokens["acme"], spec(`{"idempotency_key":"nightly-2026-11-26"}`), script("a.sh", "true")); again.code != 200 || !again.job(t).Existing {
		t.Fatalf("again, unlisted: %d %s", again.code, again.body)
	}
	if _, err := f.rdb.ZScore(context.Background(), keys.TenantJobs("acme"), member).Result(); err != nil {
		t.Errorf("the job found by its key is not listed again: %v", err)
	}
	// Another tenant's same key is another job (TestIdempotencyKeyRevealsNothing).
	other := f.submit(t, tokens["beta"], spec(`{"idempotency_key":"nightly-2026-11-26"}`), script("a.sh", "true"))
	if other.code != 201 || other.job(t).ID == first.job(t).ID || strings.Contains(string(other.body), first.job(t).ID) {
		t.Fatalf("another tenant's key: %d %s", other.code, other.body)
	}
}

func TestRefusalsLeaveNothing(t *testing.T) {
	f := newFixture(t)
	big := strings.Repeat("x", 1<<20+1)
	cases := []struct {
		name   string
		token  string
		parts  []part
		raw    string // a non-multipart body
		code   int
		field  string
		errSub string
	}{
		{"no token", "", []part{script("a.sh", "true")}, "", 401, "", "no token"},
		{"bad token", "sandq_nope", []part{script("a.sh", "true")}, "", 401, "", "not valid"},
		{"queue not allowed", tokens["beta"], []part{spec(`{"queue":"reports"}`), script("a.sh", "true")}, "", 403, "queue", "reports"},
		{"spec too large", tokens["acme"], []part{spec(`{"args":["` + strings.Repeat("x", maxSpecBytes) + `"]}`), script("a.sh", "true")}, "", 413, "spec", "over"},
		{"malformed spec", tokens["acme"], []part{spec(`{"runtime":`), script("a.sh", "true")}, "", 400, "spec", ""},
		{"unknown spec field", tokens["acme"], []part{spec(`{"runtme":"python"}`), script("a.sh", "true")}, "", 400, "runtme", ""},
		{"wrong type", tokens["acme"], []part{spec(`{"limits":{"memory_bytes":"lots"}}`), script("a.sh", "true")}, "", 400, "limits.memory_bytes", ""},
		{"unknown runtime", tokens["acme"], []part{spec(`{"runtime":"cobol"}`), script("a.sh", "true")}, "", 400, "runtime", "cobol"},
		{"image no worker offers", tokens["acme"], []part{spec(`{"image":"analysis"}`), script("a.sh", "true")}, "", 400, "image", "no published images"},
		{"image not a name", tokens["acme"], []part{spec(`{"image":"../default"}`), script("a.sh", "true")}, "", 400, "image", "not an image name"},
		{"memory over max", tokens["acme"], []part{spec(`{"limits":{"memory_bytes":68719476736}}`), script("a.sh", "true")}, "", 400, "memory", "maximum"},
		{"timeout over max", tokens["acme"], []part{spec(`{"limits":{"timeout_seconds":86400}}`), script("a.sh", "true")}, "", 400, "timeout", "maximum"},
		{"cpus zero", tokens["acme"], []part{spec(`{"limits":{"cpus":0}}`), script("a.sh", "true")}, "", 400, "cpus", "more than 0"},
		{"cpus negative", tokens["acme"], []part{spec(`{"limits":{"cpus":-1}}`), script("a.sh", "true")}, "", 400, "cpus", "more than 0"},
		{"cpus over max", tokens["acme"], []part{spec(`{"limits":{"cpus":100000}}`), script("a.sh", "true")}, "", 400, "cpus", "over the maximum"},
		{"cpus not a number", tokens["acme"], []part{spec(`{"limits":{"cpus":"half"}}`), script("a.sh", "true")}, "", 400, "limits.cpus", ""},
		{"dotdot input", tokens["acme"], []part{script("a.sh", "true"), input("../../etc/passwd", "x")}, "", 400, "inputs", ""},
		{"absolute input", tokens["acme"], []part{script("a.sh", "true"), input("/etc/passwd", "x")}, "", 400, "inputs", ""},
		{"backslash input", tokens["acme"], []part{script("a.sh", "true"), input(`..\x`, "x")}, "", 400, "inputs", ""},
		{"dotdot script", tokens["acme"], []part{script("../a.sh", "true")}, "", 400, "script", ""},
		{"colliding inputs", tokens["acme"], []part{script("a.sh", "true"), input("a.csv", "1"), input("A.csv", "2")}, "", 400, "inputs", ""},
		{"too many inputs", tokens["acme"], []part{script("a.sh", "true"), input("1", "1"), input("2", "2"), input("3", "3"), input("4", "4")}, "", 413, "inputs", "maximum of 3"},
		{"input too large", tokens["acme"], []part{script("a.sh", "true"), input("ok", "1"), input("big.bin", big)}, "", 413, "inputs", "big.bin"},
		{"inputs too large together", tokens["acme"], []part{script("a.sh", "true"), input("a", big[:1<<20]), input("b", big[:600<<10])}, "", 413, "inputs", "in all"},
		{"script too large", tokens["acme"], []part{script("a.sh", big[:65<<10])}, "", 413, "script", "maximum"},
		{"two scripts", tokens["acme"], []part{script("a.sh", "true"), script("b.sh", "true")}, "", 400, "script", ""},
		{"no script", tokens["acme"], []part{spec(`{}`), input("a.csv", "1")}, "", 400, "script", ""},
		{"spec after a file", tokens["acme"], []part{script("a.sh", "true"), spec(`{}`)}, "", 400, "spec", ""},
		{"unknown part", tokens["acme"], []part{script("a.sh", "true"), {"extra", "", "x"}}, "", 400, "extra", ""},
		{"file without name", tokens["acme"], []part{{"script", "", "true"}}, "", 400, "script", ""},
		{"not multipart", tokens["acme"], nil, `{"script":"true"}`, 400, "", "multipart"},
	}
	// A body over its cap without any file over its own: a long preamble,
	// which multipart readers skip.
	body, ct := multipartBody(t, []part{script("a.sh", "true")})
	preamble := strings.Repeat(strings.Repeat("x", 1022)+"\r\n", 3<<10)
	before := f.state(t)
	t.Run("body over cap", func(t *testing.T) {
		a := f.do(t, "POST", "/v1/jobs", tokens["acme"], io.MultiReader(strings.NewReader(preamble), body), ct)
		if a.code != 413 || a.err(t).Code != "too_large" {
			t.Errorf("%d %s", a.code, a.body)
		}
	})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var a answer
			if c.parts != nil {
				a = f.submit(t, c.token, c.parts...)
			} else {
				a = f.do(t, "POST", "/v1/jobs", c.token, strings.NewReader(c.raw), "application/json")
			}
			if a.code != c.code {
				t.Fatalf("status %d, want %d: %s", a.code, c.code, a.body)
			}
			e := a.err(t)
			if e.Field != c.field || !strings.Contains(e.Message, c.errSub) {
				t.Errorf("error %+v, want field %q and %q in the message", e, c.field, c.errSub)
			}
			if c.code == 401 && a.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if after := f.state(t); after != before {
		t.Errorf("refused requests left something:\nbefore %s\nafter  %s", before, after)
	}
}

func TestRateLimitAndPendingCap(t *testing.T) {
	f := newFixture(t)
	var codes []int
	var retryAfter string
	for range 4 {
		a := f.do(t, "GET", "/v1/jobs", tokens["slow"], nil, "")
		codes = append(codes, a.code)
		if a.code == 429 {
			retryAfter = a.header.Get("Retry-After")
			if e := a.err(t); e.Code != "rate_limited" {
				t.Errorf("429 code %q", e.Code)
			}
		}
	}
	if codes[0] != 200 || codes[1] != 200 || codes[3] != 429 || retryAfter == "" {
		t.Errorf("burst of 2 at 1/s: codes %v, Retry-After %q", codes, retryAfter)
	}
	// Other tenants are not limited by slow's budget.
	if a := f.do(t, "GET", "/v1/jobs", tokens["beta"], nil, ""); a.code != 200 {
		t.Errorf("beta limited by slow's rate: %d", a.code)
	}

	var ids []string
	for i := range 2 {
		a := f.submit(t, tokens["capped"], script("c.sh", "true"))
		if a.code != 201 {
			t.Fatalf("capped job %d: %d %s", i, a.code, a.body)
		}
		ids = append(ids, a.job(t).ID)
	}
	before := f.state(t)
	a := f.submit(t, tokens["capped"], script("c.sh", "true"), input("in.csv", "1"))
	if a.code != 429 || a.err(t).Code != "too_many_pending" {
		t.Fatalf("third unfinished job: %d %s", a.code, a.body)
	}
	if after := f.state(t); after != before {
		t.Errorf("a refusal over the cap left something:\n%s\n%s", before, after)
	}
	// A job that ends frees its place.
	if c := f.do(t, "POST", "/v1/jobs/"+ids[0]+"/cancel", tokens["capped"], nil, ""); c.code != 202 {
		t.Fatalf("cancel: %d %s", c.code, c.body)
	}
	if a := f.submit(t, tokens["capped"], script("c.sh", "true")); a.code != 201 {
		t.Errorf("after a cancel: %d %s", a.code, a.body)
	}
}

// TestUnavailable: with Redis or MinIO unreachable, submissions get 503 and
// leave nothing in the service that is up.
func TestUnavailable(t *testing.T) {
	testenv.Long(t, "waits out the clients' retries against closed ports (about 12s)")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	noRedis := serve(t, jobsConfig(closed, stack(t).MinioAddr), false)
	noS3 := serve(t, jobsConfig(stack(t).RedisAddr, closed), false)
	ok := newFixture(t)
	before := ok.state(t)
	for name, f := range map[string]*fixture{"redis down": noRedis, "s3 down": noS3} {
		a := f.submit(t, tokens["beta"], script("a.sh", "true"), input("in.csv", "1"))
		if a.code != 503 || a.err(t).Code != "unavailable" || a.header.Get("Retry-After") == "" {
			t.Errorf("%s: submit: %d %s", name, a.code, a.body)
		}
	}
	if a := noRedis.do(t, "GET", "/v1/jobs/"+jobs.NewJobID(), tokens["beta"], nil, ""); a.code != 503 {
		t.Errorf("redis down: get: %d %s", a.code, a.body)
	}
	if after := ok.state(t); after != before {
		t.Errorf("refusals left something:\n%s\n%s", before, after)
	}
}

func TestMonitoringAuth(t *testing.T) {
	f := newFixture(t)
	get := func(user, pass, bearer string) int {
		req, _ := http.NewRequest("GET", f.url+"/monitoring/api/queues", nil)
		if pass != "" {
			req.SetBasicAuth(user, pass)
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("", "", ""); c != 401 {
		t.Errorf("dashboard without a token: %d", c)
	}
	if c := get("", "", tokens["beta"]); c != 403 {
		t.Errorf("dashboard with a non-operator token: %d", c)
	}
	if c := get("anyone", tokens["acme"], ""); c != 200 {
		t.Errorf("dashboard with an operator token as basic-auth password: %d", c)
	}
	if c := get("", "", tokens["acme"]); c != 200 {
		t.Errorf("dashboard with an operator bearer token: %d", c)
	}
	open := serve(t, jobsConfig(stack(t).RedisAddr, stack(t).MinioAddr), true)
	if code, _ := httpGet(t, open.url+"/monitoring/"); code != 200 {
		t.Errorf("open dashboard (loopback server): %d", code)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMonitoringMetricsHealth: the asynqmon page and its API list the
// queue holding a task, /metrics exports asynq's queue metrics and the
// API's request counts, /healthz follows Redis.
func TestMonitoringMetricsHealth(t *testing.T) {
	st := testenv.Services(t, services.Options)
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: st.RedisAddr})
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("job:run", []byte(`{}`)), asynq.Queue("reports")); err != nil {
		t.Fatal(err)
	}
	f := serve(t, jobsConfig(st.RedisAddr, st.MinioAddr), true)

	code, body := httpGet(t, f.url+"/monitoring/")
	if code != 200 || !strings.Contains(strings.ToLower(body), "<html") {
		t.Errorf("/monitoring/: %d %.200s", code, body)
	}
	code, body = httpGet(t, f.url+"/monitoring/api/queues")
	var queues struct {
		Queues []struct {
			Queue   string `json:"queue"`
			Pending int    `json:"pending"`
		} `json:"queues"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &queues) != nil || len(queues.Queues) != 1 || queues.Queues[0].Queue != "reports" || queues.Queues[0].Pending != 1 {
		t.Errorf("/monitoring/api/queues: %d %s", code, body)
	}
	f.do(t, "GET", "/v1/jobs", "", nil, "")
	code, body = httpGet(t, f.url+"/metrics")
	for _, want := range []string{`asynq_queue_size{queue="reports"} 1`, `sandq_api_requests_total{code="401",method="GET",route="/v1/jobs"} 1`, `sandq_api_request_duration_seconds_count{route="/v1/jobs"} 1`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, no %s", code, want)
		}
	}
	if code, body = httpGet(t, f.url+"/healthz"); code != 200 || !strings.Contains(body, `"ok": true`) {
		t.Errorf("/healthz with Redis up: %d %s", code, body)
	}
	if code, body = httpGet(t, f.url+"/v1/nothing"); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Errorf("/v1/nothing: %d %s", code, body)
	}
	st.Stop()
	if code, body = httpGet(t, f.url+"/healthz"); code != 503 || !strings.Contains(body, `"ok": false`) {
		t.Errorf("/healthz with Redis down: %d %s", code, body)
	}
}

// TestClient drives the server through the Go client the CLI uses.
func TestClient(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	os.WriteFile(dir+"/job.py", []byte("print(1)"), 0o644)
	os.WriteFile(dir+"/in.csv", []byte("a\n"), 0o644)
	sc, _ := jobs.LocalFile(dir+"/job.py", "")
	in, _ := jobs.LocalFile(dir+"/in.csv", "")
	c, err := NewClient(f.url, tokens["acme"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	enq, err := c.Enqueue(ctx, jobs.Submission{Script: sc, Inputs: []jobs.File{in}, IdempotencyKey: "client-1"})
	if err != nil || enq.Existing {
		t.Fatalf("enqueue: %+v %v", enq, err)
	}
	again, err := c.Enqueue(ctx, jobs.Submission{Script: sc, IdempotencyKey: "client-1"})
	if err != nil || !again.Existing || again.ID != enq.ID {
		t.Fatalf("enqueue again: %+v %v", again, err)
	}
	st, err := c.Status(ctx, enq.ID)
	if err != nil || st.State != jobs.StatePending {
		t.Fatalf("status: %+v %v", st, err)
	}
	l, err := c.List(ctx, jobs.ListFilter{State: jobs.StatePending})
	if err != nil || !slices.ContainsFunc(l.Jobs, func(j *jobs.JobStatus) bool { return j.ID == enq.ID }) {
		t.Fatalf("list: %+v %v", l, err)
	}
	// Wait follows the event stream: the first event is the pending state;
	// a cancel (from elsewhere) removes the job, and the stream reports it.
	seen := make(chan jobs.State, 10)
	done := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		_, err := c.Wait(wctx, enq.ID, func(st *jobs.JobStatus) { seen <- st.State })
		done <- err
	}()
	if s := <-seen; s != jobs.StatePending {
		t.Fatalf("first event: %s", s)
	}
	if out, err := c.Cancel(ctx, enq.ID); err != nil || out != jobs.CancelRemoved {
		t.Fatalf("cancel: %s %v", out, err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "no such job") {
		t.Errorf("wait on a removed job: %v", err)
	}
	_, err = c.Status(ctx, enq.ID)
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 404 {
		t.Errorf("status of a removed job: %v", err)
	}
	bad, _ := NewClient(f.url, "sandq_wrong")
	if _, err := bad.Status(ctx, enq.ID); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}
	for _, u := range []string{"ftp://x", "localhost:8080", ""} {
		if _, err := NewClient(u, "t"); err == nil {
			t.Errorf("NewClient(%q) accepted", u)
		}
	}
}
