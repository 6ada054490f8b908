package mcp

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/storage"
)

// testServer is a server on a client whose Redis is never reached: the
// tests here stop before any call would reach it.
func testServer(t *testing.T, auth *api.AuthConfig) *Server {
	t.Helper()
	c, err := jobs.NewClient(jobs.Config{RedisAddr: "127.0.0.1:1", Storage: storage.Config{Endpoint: "127.0.0.1:1", Bucket: "b", AccessKey: "k", SecretKey: "s"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cfg := c.Config()
	return &Server{
		cfg:    Config{Client: c, Auth: auth, MaxWait: time.Minute, MaxInlineBytes: DefaultMaxInlineBytes, MaxImageBytes: DefaultMaxImageBytes, MaxInlineFiles: DefaultMaxInlineFiles},
		queue:  "default",
		sandbx: &Sandbox{Queue: "default", DefaultImage: "analysis", Images: []ImageInfo{{Name: "analysis", Packages: []string{"python3", "python3-matplotlib"}}, {Name: "default"}}, Default: cfg.DefaultLimits, Max: cfg.MaxLimits},
		logger: slog.New(slog.DiscardHandler),
	}
}

func TestSubmissionRefusesBadArguments(t *testing.T) {
	s := testServer(t, nil)
	for _, c := range []struct {
		in   RunCodeInput
		want string
	}{
		{RunCodeInput{Code: "1"}, "language: give python, node or shell"},
		{RunCodeInput{Language: "cobol", Code: "1"}, `runtime: unknown runtime "cobol"`},
		{RunCodeInput{Language: "python"}, "code: empty"},
		{RunCodeInput{Language: "python", Code: "1", Files: []FileInput{{Name: "a", Text: "x", Base64: "eA=="}}}, "files[0] (a): give text or base64, not both"},
		{RunCodeInput{Language: "python", Code: "1", Files: []FileInput{{Name: "b", Base64: "!!"}}}, "files[0] (b): base64"},
	} {
		_, err := s.submission(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.in, err, c.want)
		}
	}
	sub, err := s.submission(RunCodeInput{Language: "js", Code: "console.log(1)", Network: []string{"default"}, TimeoutSeconds: 5,
		Files: []FileInput{{Name: "t.txt", Text: "hi"}, {Name: "b.bin", Base64: "AAE="}}, InputsFrom: []InputFrom{{JobID: "j", Glob: "*.png"}}})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Script.Name != "main.js" || sub.Runtime != jobs.RuntimeNode || sub.Queue != "default" || sub.Limits.TimeoutSeconds != 5 ||
		len(sub.Inputs) != 2 || sub.Inputs[1].Size != 2 || sub.InputsFrom[0] != (jobs.InputFrom{Job: "j", Glob: "*.png"}) {
		t.Errorf("submission %+v", sub)
	}
}

// run_job_status waits at most a minute: a longer (or negative) wait is
// refused before any Redis is asked (this one's would never answer).
func TestJobStatusRefusesWaitOutOfRange(t *testing.T) {
	s := testServer(t, nil)
	for _, w := range []float64{60.5, 3600, -1} {
		_, _, err := s.jobStatus(t.Context(), &sdk.CallToolRequest{}, JobIDInput{JobID: jobs.NewJobID(), WaitSeconds: w})
		if want := fmt.Sprintf("wait_seconds: %g is not from 0 to 60", w); err == nil || err.Error() != want {
			t.Errorf("wait_seconds %g: %v, want %q", w, err, want)
		}
	}
}

func TestDescriptionSaysWhatTheSandboxHas(t *testing.T) {
	s := testServer(t, nil)
	d := s.sandbx.runCodeDescription(time.Minute)
	for _, want := range []string{`Image "analysis" (the default): a minimal Debian with the packages python3, python3-matplotlib.`, `Image "default" (pass image="default"): packages not known`, "Network: none.", "timeout " + s.sandbx.Default.Timeout.String()} {
		if !strings.Contains(d, want) {
			t.Errorf("description lacks %q:\n%s", want, d)
		}
	}
	s.sandbx.Network = jobs.QueueNetwork{Groups: map[string][]string{"pypi": {"pypi.org"}}, Max: []string{"pypi", "*.example.com"}, Default: []string{"pypi"}, Ports: []int{443}}
	d = s.sandbx.runCodeDescription(time.Minute)
	for _, want := range []string{`group "pypi" (pypi.org); host "*.example.com"; "default" is pypi. Ports 443.`} {
		if !strings.Contains(d, want) {
			t.Errorf("description lacks %q:\n%s", want, d)
		}
	}
}

func TestHTTPRefusesRequestsWithoutAValidToken(t *testing.T) {
	tok, entry, err := api.NewToken("t1", "x")
	if err != nil {
		t.Fatal(err)
	}
	auth := &api.AuthConfig{Tenants: map[string]api.Tenant{"t1": {Queues: []string{"*"}}}, Tokens: []api.TokenEntry{entry}}
	if err := auth.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Server{"with auth": testServer(t, auth), "without auth": testServer(t, nil)} {
		h := s.Handler()
		for _, header := range []string{"", "Bearer", "Bearer sandq_wrong", "Basic " + tok, "Bearer " + tok + "x"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("POST", "/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
			if header != "" {
				req.Header.Set("Authorization", header)
			}
			h.ServeHTTP(rec, req)
			var body struct {
				Error struct{ Code, Message string }
			}
			json.Unmarshal(rec.Body.Bytes(), &body)
			if rec.Code != http.StatusUnauthorized || body.Error.Code != "unauthenticated" || rec.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("%s, Authorization %q: %d %s", name, header, rec.Code, rec.Body)
			}
		}
	}
}

func TestCallsOverHTTPNeverGetTheDirectProducer(t *testing.T) {
	s := testServer(t, nil)
	if b, err := s.backendOf(t.Context(), &sdk.CallToolRequest{}); err != nil || b != backend(s.cfg.Client) {
		t.Fatalf("stdio: %v, %v", b, err)
	}
	s.Handler()
	if _, err := s.backendOf(t.Context(), &sdk.CallToolRequest{}); err == nil || !strings.Contains(err.Error(), "unauthenticated") {
		t.Errorf("HTTP without a token: %v", err)
	}
	if _, err := s.backendOf(t.Context(), &sdk.CallToolRequest{Extra: &sdk.RequestExtra{}}); err == nil {
		t.Error("HTTP with no token info: no error")
	}
}

// The log of run_code names the tenant the backend submits as: the
// Submission the tool builds never carries it (the tenant's backend sets
// it on its own copy).
func TestBackendNamesItsTenant(t *testing.T) {
	tok, entry, err := api.NewToken("t1", "x")
	if err != nil {
		t.Fatal(err)
	}
	a := &api.AuthConfig{Tenants: map[string]api.Tenant{"t1": {Queues: []string{"*"}}}, Tokens: []api.TokenEntry{entry}}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	p, ok := a.LookupToken(tok)
	if !ok {
		t.Fatal("token not found")
	}
	s := testServer(t, a)
	s.Handler()
	b, err := s.backendOf(t.Context(), &sdk.CallToolRequest{Extra: &sdk.RequestExtra{TokenInfo: &auth.TokenInfo{Extra: map[string]any{principalKey: p}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := tenantOf(b); got != "t1" {
		t.Errorf("tenant over HTTP: %q, want t1", got)
	}
	if got := tenantOf(s.cfg.Client); got != "" {
		t.Errorf("tenant of the direct producer: %q, want none", got)
	}
}

// A trimmed result lists fewer outputs than the job wrote: the summary
// says how many are not listed, and links the manifest that has them all.
func TestRenderSaysOutputsWereTrimmed(t *testing.T) {
	s := testServer(t, nil)
	exp := time.Date(2030, 1, 2, 3, 4, 0, 0, time.UTC)
	r := &jobs.Result{ID: "j1", Status: jobs.StatusSucceeded, Outputs: []jobs.OutputDoc{
		{Path: "a.bin", Size: 1, ContentType: "application/octet-stream", URL: "https://store/a", ExpiresAt: exp},
	}}
	text := func() string {
		t.Helper()
		res, out, err := s.render(t.Context(), &jobs.JobStatus{ID: "j1", State: jobs.StateDone, Result: r})
		if err != nil || len(out.Outputs) != 1 || out.Outputs[0].Returned != "link" {
			t.Fatalf("render: %v, %+v", err, out)
		}
		return res.Content[0].(*sdk.TextContent).Text
	}
	if got := text(); strings.Contains(got, "not listed") {
		t.Errorf("untrimmed result:\n%s", got)
	}
	r.Trimmed = &jobs.TrimmedDoc{MaxBytes: 64 << 10, Outputs: 4, Manifest: &jobs.ManifestRef{URL: "https://store/manifest.json", ExpiresAt: exp}}
	if got, want := text(), "4 more outputs are not listed: the result was trimmed to the worker's cap of 64KiB; its manifest lists them all: https://store/manifest.json (the link expires 2030-01-02 03:04 UTC).\n"; !strings.HasSuffix(got, want) {
		t.Errorf("trimmed result:\n%s\nwant it to end %q", got, want)
	}
	r.Trimmed = &jobs.TrimmedDoc{MaxBytes: 64 << 10, Outputs: 1}
	if got, want := text(), "1 more output is not listed: the result was trimmed to the worker's cap of 64KiB.\n"; !strings.HasSuffix(got, want) {
		t.Errorf("trimmed result without a manifest:\n%s\nwant it to end %q", got, want)
	}
	r.Trimmed = &jobs.TrimmedDoc{MaxBytes: 64 << 10, EgressRequests: 5}
	if got := text(); strings.Contains(got, "not listed") {
		t.Errorf("result trimmed of egress requests only:\n%s", got)
	}
}
