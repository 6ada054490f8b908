package chaos

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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/internal/keys"
	"github.com/sandq/sandq/internal/testenv"
)

// TestHostileAPIClients floods a real `sandq serve` (the binary, as
// deployed) with one tenant's hostile clients at once: bodies that stall
// (slowloris), more event streams than the tenant may hold, requests for
// the dashboard under a rebound host name, and file names that break their
// MIME headers. Another tenant's submissions and reads go through
// meanwhile; every stalled connection is cut and its descriptor released;
// nothing the hostile requests began is left in Redis or the store.
func TestHostileAPIClients(t *testing.T) {
	const queue = "chaos-api"
	dir := t.TempDir()
	toks := map[string]string{}
	var tenants, tokens []string
	for _, tenant := range []string{"mallory", "victim"} {
		tok, entry, err := api.NewToken(tenant, "chaos")
		if err != nil {
			t.Fatal(err)
		}
		toks[tenant] = tok
		tokens = append(tokens, fmt.Sprintf(`{"tenant": %q, "sha256": %q}`, tenant, entry.SHA256))
	}
	// mallory is not rate limited, so that the flood meets the other
	// defences.
	tenants = append(tenants, fmt.Sprintf(`"mallory": {"queues": [%q], "rate_per_second": -1, "max_streams": 3}`, queue),
		fmt.Sprintf(`"victim": {"queues": [%q]}`, queue))
	authPath := filepath.Join(dir, "auth.json")
	if err := os.WriteFile(authPath, []byte(`{"tenants": {`+strings.Join(tenants, ", ")+`}, "tokens": [`+strings.Join(tokens, ", ")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(env.bin, "serve", "--listen", addr, "--auth-config", authPath,
		"--body-idle-timeout", "2s", "--body-timeout", "20s", "--write-timeout", "5s")
	cmd.Env = append(workerEnv(), "SANDQ_QUEUE="+queue)
	serve, err := testenv.StartProcess(cmd, filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer serve.Stop(time.Minute)
	base := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("sandq serve did not come up")
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: env.stack.RedisAddr})
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	defer insp.DeleteQueue(queue, true)

	do := func(method, path, token string, body io.Reader, ct string, host string) (int, []byte) {
		req, _ := http.NewRequest(method, base+path, body)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, []byte(err.Error())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	submit := func(token, name, content string) (int, string) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		w, _ := mw.CreateFormFile("script", name)
		io.WriteString(w, content)
		mw.Close()
		code, b := do("POST", "/v1/jobs", token, &body, mw.FormDataContentType(), "")
		var j struct {
			ID string `json:"id"`
		}
		json.Unmarshal(b, &j)
		return code, j.ID
	}
	var ids []string
	defer func() {
		for _, id := range ids {
			do("POST", "/v1/jobs/"+id+"/cancel", toks["victim"], nil, "", "")
			do("POST", "/v1/jobs/"+id+"/cancel", toks["mallory"], nil, "", "")
		}
	}()
	code, malloryJob := submit(toks["mallory"], "m.sh", "true")
	if code != 201 {
		t.Fatalf("mallory's job: %d", code)
	}
	ids = append(ids, malloryJob)
	if code, id := submit(toks["victim"], "v.sh", "true"); code != 201 {
		t.Fatalf("victim's first job: %d", code)
	} else {
		ids = append(ids, id)
	}
	_, port, _ := net.SplitHostPort(addr)
	inBase := inbound(cmd.Process.Pid, port)

	// Slowloris: bodies that begin a script part and stall.
	const stalled = 150
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range stalled {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /v1/jobs HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 1000000\r\n\r\n"+
			"--XYZ\r\nContent-Disposition: form-data; name=\"script\"; filename=\"stalled-%d.sh\"\r\n\r\necho", addr, toks["mallory"], i)
	}
	// More event streams than mallory may hold.
	var streams sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	ctx, cancelStreams := context.WithCancel(context.Background())
	defer cancelStreams()
	for range 20 {
		streams.Add(1)
		go func() {
			defer streams.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/jobs/"+malloryJob+"/events", nil)
			req.Header.Set("Authorization", "Bearer "+toks["mallory"])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
			if resp.StatusCode == 200 {
				<-ctx.Done()
			}
			resp.Body.Close()
		}()
	}
	// The dashboard under a rebound name, and names that break MIME.
	for range 20 {
		if code, _ := do("GET", "/monitoring/api/queues", "", nil, "", "evil.example"); code != 421 {
			t.Errorf("dashboard for Host evil.example: %d", code)
		}
	}
	for _, c := range []string{"\x00", "\r", "\n", "\x1b"} {
		body := "--XYZ\r\nContent-Disposition: form-data; name=\"script\"; filename=\"a" + c + "b.sh\"\r\n\r\ntrue\r\n--XYZ--\r\n"
		if code, b := do("POST", "/v1/jobs", toks["mallory"], strings.NewReader(body), "multipart/form-data; boundary=XYZ", ""); code != 400 || !strings.Contains(string(b), `"field": "script"`) {
			t.Errorf("file name with %q: %d %s", c, code, b)
		}
	}
	// The other tenant is served meanwhile.
	if code, id := submit(toks["victim"], "v2.sh", "true"); code != 201 {
		t.Errorf("victim's submission during the flood: %d", code)
	} else {
		ids = append(ids, id)
	}
	if code, _ := do("GET", "/v1/jobs", toks["victim"], nil, "", ""); code != 200 {
		t.Errorf("victim's list during the flood: %d", code)
	}
	// Every stalled body is cut (408) after the idle timeout.
	cut := 0
	readBy := time.Now().Add(10 * time.Second)
	for _, c := range conns {
		c.SetReadDeadline(readBy)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil && resp.StatusCode == 408 {
			cut++
		}
	}
	if cut != stalled {
		t.Errorf("%d of %d stalled bodies were cut with 408", cut, stalled)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		mu.Lock()
		n := codes[200] + codes[429]
		mu.Unlock()
		if n == 20 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	if codes[200] != 3 || codes[429] != 17 {
		t.Errorf("mallory's 20 event streams with max_streams 3: %v", codes)
	}
	mu.Unlock()
	// The server keeps no connection it cut: what it holds from clients is
	// the 3 streams and at most a few keep-alive connections.
	var now int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if now = inbound(cmd.Process.Pid, port); now <= inBase+3+3 || time.Now().After(deadline) {
			break
		}
	}
	if now > inBase+3+3 {
		t.Errorf("the server holds %d client connections, %d before the flood of %d", now, inBase, stalled)
	}
	cancelStreams()
	streams.Wait()
	// What the stalled submissions began is gone: mallory holds one
	// unfinished job, and the store only the jobs' own files.
	open, err := rdb.SMembers(context.Background(), keys.TenantOpen("mallory")).Result()
	if err != nil || len(open) != 1 || !strings.HasSuffix(open[0], malloryJob) {
		t.Errorf("mallory's unfinished jobs: %v %v", open, err)
	}
	objs, err := env.store.List(context.Background(), "jobs/")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if strings.Contains(o, "/script/stalled-") {
			t.Errorf("a stalled submission's upload stays: %s", o)
		}
	}
	t.Logf("%d stalled bodies cut, event streams %v, client connections %d before and %d after", cut, codes, inBase, now)
}

// inbound counts the TCP connections process pid holds on its local port
// (hex-encoded in /proc/net/tcp*): the clients it serves.
func inbound(pid int, port string) int {
	inodes := map[string]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var p int
	fmt.Sscan(port, &p)
	hexPort := fmt.Sprintf("%04X", p)
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			// sl local_address rem_address st ... inode (field 9)
			if len(fields) < 10 || fields[3] == "0A" { // 0A: listening
				continue
			}
			if _, lp, _ := strings.Cut(fields[1], ":"); lp == hexPort && inodes[fields[9]] {
				n++
			}
		}
	}
	return n
}
