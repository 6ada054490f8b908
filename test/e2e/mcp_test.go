package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/executor"
	"github.com/sandq/sandq/executor/egress"
	"github.com/sandq/sandq/internal/testenv"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/mcp"
)

// mcpQueue is the queue of the MCP tests' worker: the analysis image, and
// a network policy whose one allowed host is a stand-in resolved to
// loopback by the worker's proxy, so nothing a job asks for leaves this
// machine.
const mcpQueue = "mcp"

// startMCPWorker starts the analysis-image worker serving mcpQueue.
func startMCPWorker(t *testing.T) {
	t.Helper()
	cfg := env.cfg
	cfg.Worker.Image = analysisImage
	cfg.Worker.Queues = map[string]int{mcpQueue: 1}
	cfg.Worker.Concurrency = 2
	cfg.Worker.ShutdownGrace = time.Second
	cfg.Egress.Groups = map[string][]string{"standin": {standInHost}}
	cfg.Egress.Queues = map[string]jobs.QueueEgress{mcpQueue: {Max: []string{"standin"}, Default: []string{"standin"}}}
	proxy := egress.Config{Resolver: testenv.Resolver{standInHost: testenv.Loopback}, AllowRanges: []string{"127.0.0.1/32"}}
	startWorker(t, cfg, executor.RunscConfig{StateDir: env.state, Network: &executor.NetworkConfig{Proxy: proxy}})
}

// mcpEnv is the environment `sandq mcp` runs with: the test stack, the
// producer's S3 credentials, the MCP queue.
func mcpEnv() []string {
	return append(os.Environ(),
		"SANDQ_REDIS_ADDR="+env.stack.RedisAddr, "SANDQ_S3_ENDPOINT="+env.stack.MinioAddr,
		"SANDQ_S3_ACCESS_KEY="+env.producerS3.AccessKey, "SANDQ_S3_SECRET_KEY="+env.producerS3.SecretKey,
		"SANDQ_S3_BUCKET="+env.producerS3.Bucket, "SANDQ_QUEUE="+mcpQueue, "SANDQ_IMAGE_DIR="+env.cfg.Worker.ImageDir)
}

// mcpStdio starts `sandq mcp` and connects the SDK's client to it over
// stdio.
func mcpStdio(t *testing.T) *sdk.ClientSession {
	t.Helper()
	cmd := exec.Command(sandqBin(t), "mcp")
	cmd.Env = mcpEnv()
	cmd.Stderr = os.Stderr
	client := sdk.NewClient(&sdk.Implementation{Name: "sandq-e2e", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := client.Connect(ctx, &sdk.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to sandq mcp over stdio: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// call calls a tool and decodes its structured content into out.
func call(t *testing.T, cs *sdk.ClientSession, tool string, args map[string]any, out any) *sdk.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	if out != nil && res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: structured content %s: %v", tool, b, err)
		}
	}
	return res
}

// texts joins a result's text content.
func texts(res *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*sdk.TextContent); ok {
			b.WriteString(tc.Text + "\n")
		}
	}
	return b.String()
}

const chartScript = `
import os
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
xs = list(range(10))
plt.plot(xs, [x * x for x in xs])
plt.savefig(os.path.join(os.environ["OUTPUT_DIR"], "chart.png"))
open(os.path.join(os.environ["OUTPUT_DIR"], "summary.txt"), "w").write("sum of squares %d\n" % sum(x * x for x in xs))
with open(os.path.join(os.environ["INPUT_DIR"], "numbers.csv")) as f:
    print("rows", len(f.read().splitlines()))
`

// TestMCPOverStdio drives `sandq mcp` with the SDK's client as a desktop
// assistant would: the tools say what the sandbox has, a matplotlib chart
// comes back as an image, a host outside the policy is refused and
// reported, a timeout ends timed_out, and every call is an ordinary job.
func TestMCPOverStdio(t *testing.T) {
	startMCPWorker(t)
	cs := mcpStdio(t)
	ctx := context.Background()

	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var desc string
	var names []string
	for _, tool := range tools.Tools {
		names = append(names, tool.Name)
		if tool.Name == "run_code" {
			desc = tool.Description
		}
	}
	if strings.Join(names, ",") != "run_code,run_job_status,cancel_job" && strings.Join(names, ",") != "cancel_job,run_code,run_job_status" {
		t.Errorf("tools %v", names)
	}
	// The description is built from the live configuration: the image the
	// worker published, its packages, and the queue's network policy.
	for _, want := range []string{`Image "analysis" (the default)`, "python3-matplotlib", "python3-pandas", `group "standin" (` + standInHost + ")", "Any other host is refused"} {
		if !strings.Contains(desc, want) {
			t.Errorf("run_code's description lacks %q:\n%s", want, desc)
		}
	}

	t.Run("chart", func(t *testing.T) {
		var out mcp.JobOutput
		res := call(t, cs, "run_code", map[string]any{
			"language": "python", "code": chartScript,
			"files": []map[string]any{{"name": "numbers.csv", "text": "1\n2\n3\n"}},
		}, &out)
		if res.IsError || out.Status != "succeeded" {
			t.Fatalf("run_code: error %v, status %q:\n%s", res.IsError, out.Status, texts(res))
		}
		var png []byte
		for _, c := range res.Content {
			if ic, ok := c.(*sdk.ImageContent); ok && ic.MIMEType == "image/png" {
				png = ic.Data
			}
		}
		if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("no PNG image content (got %d bytes starting %q):\n%s", len(png), png[:min(len(png), 8)], texts(res))
		}
		if !strings.Contains(texts(res), "sum of squares 285") || !strings.Contains(out.Stdout, "rows 3") {
			t.Errorf("the text output is not inline, or the input was not read:\n%s", texts(res))
		}
		// It is an ordinary job: its result is in Redis like any other.
		st, err := env.client.Status(ctx, out.JobID)
		if err != nil || st.Result == nil || st.Result.Status != jobs.StatusSucceeded || st.Queue != mcpQueue || len(st.Result.Outputs) != 2 {
			t.Fatalf("job %s as sandq sees it: %+v, %v", out.JobID, st, err)
		}
		// run_job_status returns the same result; cancel_job refuses a
		// finished job.
		var again mcp.JobOutput
		call(t, cs, "run_job_status", map[string]any{"job_id": out.JobID}, &again)
		if again.Status != "succeeded" || len(again.Outputs) != 2 {
			t.Errorf("run_job_status: %+v", again)
		}
		if res := call(t, cs, "cancel_job", map[string]any{"job_id": out.JobID}, nil); !res.IsError || !strings.Contains(texts(res), "already finished") {
			t.Errorf("cancel_job of a finished job: %v %s", res.IsError, texts(res))
		}

		// A later call takes the chart as an input by job ID.
		var next mcp.JobOutput
		res = call(t, cs, "run_code", map[string]any{
			"language": "shell", "code": `head -c 8 "$INPUT_DIR/chart.png" | od -c | head -1`,
			"inputs_from": []map[string]any{{"job_id": out.JobID, "glob": "*.png"}},
		}, &next)
		if next.Status != "succeeded" || !strings.Contains(next.Stdout, "P   N   G") {
			t.Errorf("inputs_from: %+v\n%s", next, texts(res))
		}
	})

	// Text over the inline cap (64 KiB) and a file neither text nor an
	// image come back as links; a small text file still inline.
	t.Run("links", func(t *testing.T) {
		var out mcp.JobOutput
		res := call(t, cs, "run_code", map[string]any{
			"language": "shell",
			"code":     `head -c 70000 /dev/zero | tr '\0' a > "$OUTPUT_DIR/big.txt"; printf small > "$OUTPUT_DIR/small.txt"; printf '\001\002\377' > "$OUTPUT_DIR/blob.bin"`,
		}, &out)
		if res.IsError || out.Status != "succeeded" {
			t.Fatalf("run_code: error %v, status %q:\n%s", res.IsError, out.Status, texts(res))
		}
		returned := map[string]string{}
		for _, o := range out.Outputs {
			returned[o.Path] = o.Returned
		}
		want := map[string]string{"big.txt": "link", "blob.bin": "link", "small.txt": "text"}
		if fmt.Sprint(returned) != fmt.Sprint(want) {
			t.Errorf("outputs returned as %v, want %v", returned, want)
		}
		links := 0
		for _, c := range res.Content {
			if l, ok := c.(*sdk.ResourceLink); ok && strings.HasPrefix(l.URI, "http") {
				links++
			}
		}
		if links != 2 || strings.Contains(texts(res), "aaaaaaaa") {
			t.Errorf("%d resource links, want 2 (and the big text not inline):\n%.300s", links, texts(res))
		}
	})

	t.Run("refused host", func(t *testing.T) {
		const refused = "refused.sandq.test"
		code := fmt.Sprintf(`
import urllib.request
try:
    urllib.request.urlopen("https://%s/", timeout=20)
    print("reached")
except Exception as e:
    print("refused:", e)
`, refused)
		var out mcp.JobOutput
		res := call(t, cs, "run_code", map[string]any{"language": "python", "code": code, "network": []string{"standin"}}, &out)
		if out.Status != "succeeded" || strings.Contains(out.Stdout, "reached") {
			t.Fatalf("status %q:\n%s", out.Status, texts(res))
		}
		found := false
		for _, r := range out.NetworkRefused {
			found = found || r.Host == refused
		}
		if !found || !strings.Contains(texts(res), "network refused: "+refused+":443") {
			t.Errorf("the refusal of %s is not in the result: %+v\n%s", refused, out.NetworkRefused, texts(res))
		}
	})

	t.Run("network outside the policy", func(t *testing.T) {
		res := call(t, cs, "run_code", map[string]any{"language": "shell", "code": "true", "network": []string{"evil.example.net"}}, nil)
		if !res.IsError || !strings.Contains(texts(res), "network") || !strings.Contains(texts(res), "evil.example.net") {
			t.Errorf("a network beyond the queue's policy: %v %s", res.IsError, texts(res))
		}
	})

	t.Run("timeout", func(t *testing.T) {
		var out mcp.JobOutput
		res := call(t, cs, "run_code", map[string]any{"language": "shell", "code": "echo started; sleep 120", "timeout_seconds": 2}, &out)
		if !res.IsError || out.Status != "timed_out" || !strings.Contains(out.Stdout, "started") {
			t.Errorf("a job over its timeout: error %v, %+v\n%s", res.IsError, out, texts(res))
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, c := range []struct {
			args map[string]any
			want string
		}{
			{map[string]any{"language": "cobol", "code": "x"}, "runtime"},
			{map[string]any{"language": "python", "code": ""}, "code"},
			{map[string]any{"language": "python", "code": "1", "files": []map[string]any{{"name": "../x", "text": "x"}}}, "inputs"},
			{map[string]any{"language": "python", "code": "1", "files": []map[string]any{{"name": "x", "base64": "!!"}}}, "base64"},
			{map[string]any{"language": "python", "code": "1", "timeout_seconds": 1e9}, "timeout"},
			{map[string]any{"language": "python", "code": "1", "image": "nosuchimage"}, "image"},
		} {
			res := call(t, cs, "run_code", c.args, nil)
			if !res.IsError || !strings.Contains(texts(res), c.want) {
				t.Errorf("%v: error %v, %q; want an error naming %s", c.args, res.IsError, texts(res), c.want)
			}
		}
		res := call(t, cs, "run_job_status", map[string]any{"job_id": "0123456789abcdef0123456789abcdef"}, nil)
		if !res.IsError || !strings.Contains(texts(res), "not found") {
			t.Errorf("status of an unknown job: %v %s", res.IsError, texts(res))
		}
	})
}

// TestMCPOverHTTP serves the streamable HTTP transport behind API tokens:
// no token or a bad one is 401, a good one runs jobs as its tenant's,
// which see nothing of other owners' jobs.
func TestMCPOverHTTP(t *testing.T) {
	startMCPWorker(t)
	// mcp-tenant may use the queue; slow-tenant only twice (burst 2, then
	// one request in 1000s); other-tenant only another queue; one-tenant
	// may have one unfinished job.
	tokens := map[string]string{}
	var entries []api.TokenEntry
	for _, tenant := range []string{"mcp-tenant", "slow-tenant", "other-tenant", "one-tenant"} {
		tok, entry, err := api.NewToken(tenant, "e2e")
		if err != nil {
			t.Fatal(err)
		}
		tokens[tenant] = tok
		entries = append(entries, entry)
	}
	tok := tokens["mcp-tenant"]
	dir := t.TempDir()
	authPath := filepath.Join(dir, "auth.json")
	b, _ := json.Marshal(map[string]any{"tenants": map[string]any{
		"mcp-tenant":   map[string]any{"queues": []string{mcpQueue}},
		"slow-tenant":  map[string]any{"queues": []string{mcpQueue}, "rate_per_second": 0.001, "burst": 2},
		"other-tenant": map[string]any{"queues": []string{"other"}},
		"one-tenant":   map[string]any{"queues": []string{mcpQueue}, "max_pending": 1},
	}, "tokens": entries})
	if err := os.WriteFile(authPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testenv.FreeAddr(t)
	cmd := exec.Command(sandqBin(t), "mcp", "--listen", addr, "--auth-config", authPath)
	cmd.Env = mcpEnv()
	p := testenv.Start(t, cmd, filepath.Join(dir, "mcp.log"))
	if _, err := p.WaitOutput("serving MCP", time.Minute); err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + addr + "/mcp"

	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`
	for name, header := range map[string]string{"no token": "", "bad token": "Bearer sandq_not-a-token", "basic auth": "Basic " + tok} {
		req, _ := http.NewRequest("POST", endpoint, strings.NewReader(initialize))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d (WWW-Authenticate %q), want 401", name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}

	// A reverse proxy on this host forwards the public name: with a
	// token, it is served.
	req, _ := http.NewRequest("POST", endpoint, strings.NewReader(initialize))
	req.Host = "sandq.example.internal"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a request under a proxied name: %d, want 200", resp.StatusCode)
	}

	// The tenant's request rate, shared with the API, applies.
	for i := range 3 {
		req, _ := http.NewRequest("POST", endpoint, strings.NewReader(initialize))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+tokens["slow-tenant"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: http.StatusOK, false: http.StatusTooManyRequests}[i < 2]; resp.StatusCode != want || (i == 2 && resp.Header.Get("Retry-After") == "") {
			t.Errorf("slow tenant's request %d: %d (Retry-After %q), want %d", i+1, resp.StatusCode, resp.Header.Get("Retry-After"), want)
		}
	}

	cs := mcpHTTP(t, endpoint, tok)
	var out mcp.JobOutput
	res := call(t, cs, "run_code", map[string]any{"language": "shell", "code": "echo hello from http"}, &out)
	if res.IsError || out.Status != "succeeded" || !strings.Contains(out.Stdout, "hello from http") {
		t.Fatalf("run_code over HTTP: %+v\n%s", out, texts(res))
	}
	// The job is the tenant's: its view finds it, and the API would list it.
	if st, err := env.client.Tenant("mcp-tenant").Status(context.Background(), out.JobID); err != nil || st.Tenant != "mcp-tenant" {
		t.Errorf("the job in the tenant's view: %+v, %v", st, err)
	}
	// A job of a direct producer is not found through the tenant's token.
	enq, err := env.client.Enqueue(context.Background(), jobs.Submission{Script: file(t, "x.sh", "true"), Queue: mcpQueue})
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"run_job_status", "cancel_job"} {
		if res := call(t, cs, tool, map[string]any{"job_id": enq.ID}, nil); !res.IsError || !strings.Contains(texts(res), "not found") {
			t.Errorf("%s of another owner's job: %v %s", tool, res.IsError, texts(res))
		}
	}
	res = call(t, cs, "run_code", map[string]any{"language": "shell", "code": "true", "inputs_from": []map[string]any{{"job_id": enq.ID}}}, nil)
	if !res.IsError || !strings.Contains(texts(res), "inputs_from: no job "+enq.ID) {
		t.Errorf("inputs_from another owner's job: %v %s", res.IsError, texts(res))
	}
	if st, err := env.client.Status(context.Background(), enq.ID); err != nil || (st.State == jobs.StateDone && st.Result.Status == jobs.StatusCanceled) {
		t.Errorf("the other owner's job was touched: %+v, %v", st, err)
	}

	// A tenant that may not use the queue is refused, naming it.
	other := mcpHTTP(t, endpoint, tokens["other-tenant"])
	if res := call(t, other, "run_code", map[string]any{"language": "shell", "code": "true"}, nil); !res.IsError || !strings.Contains(texts(res), `queue: tenant other-tenant may not use queue "mcp"`) {
		t.Errorf("a tenant without the queue: %v %s", res.IsError, texts(res))
	}

	// A tenant at its cap of unfinished jobs is refused; cancel_job ends
	// the running job, which frees its place.
	one := mcpHTTP(t, endpoint, tokens["one-tenant"])
	first := make(chan mcp.JobOutput, 1)
	go func() {
		var out mcp.JobOutput
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		res, err := one.CallTool(ctx, &sdk.CallToolParams{Name: "run_code", Arguments: map[string]any{"language": "shell", "code": "echo running; sleep 100", "timeout_seconds": 120}})
		if err == nil && res.StructuredContent != nil {
			b, _ := json.Marshal(res.StructuredContent)
			json.Unmarshal(b, &out)
		}
		first <- out
	}()
	var running *jobs.JobStatus
	for deadline := time.Now().Add(2 * time.Minute); running == nil && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		list, _, err := env.client.Tenant("one-tenant").List(context.Background(), jobs.ListFilter{State: jobs.StateActive})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) > 0 {
			running = list[0]
		}
	}
	if running == nil {
		t.Fatal("the first job of one-tenant never ran")
	}
	if res := call(t, one, "run_code", map[string]any{"language": "shell", "code": "true"}, nil); !res.IsError || !strings.Contains(texts(res), "unfinished jobs") {
		t.Errorf("a tenant at its cap: %v %s", res.IsError, texts(res))
	}
	var cancelled mcp.CancelOutput
	if res := call(t, one, "cancel_job", map[string]any{"job_id": running.ID}, &cancelled); res.IsError || cancelled.Outcome != string(jobs.CancelSignalled) {
		t.Errorf("cancel_job of a running job: %+v %s", cancelled, texts(res))
	}
	if out := <-first; out.JobID != running.ID || out.Status != string(jobs.StatusCanceled) {
		t.Errorf("the cancelled job's run_code returned %+v", out)
	}
}

// mcpHTTP connects the SDK's client to `sandq mcp --listen` with a token.
func mcpHTTP(t *testing.T, endpoint, tok string) *sdk.ClientSession {
	t.Helper()
	client := sdk.NewClient(&sdk.Implementation{Name: "sandq-e2e", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := client.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &http.Client{Transport: bearer{tok}}, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatalf("connect over HTTP with a token: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// bearer adds a bearer token to every request.
type bearer struct{ tok string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.tok)
	return http.DefaultTransport.RoundTrip(r)
}
