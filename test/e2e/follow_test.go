package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

// liveScript prints a line every 100 ms for 3 s, every fifth on stderr,
// with Python's print: its output reaches followers as it runs only
// because sandq flushes Python's stdout (the job directory's
// sitecustomize).
const liveScript = `import sys, time
for i in range(1, 31):
    if i % 5 == 0:
        print("err", i, file=sys.stderr)
    else:
        print("out", i)
    time.sleep(0.1)
`

// liveLines are liveScript's lines, stdout's alone and stderr's alone.
func liveLines() (stdout, stderr []string) {
	for i := 1; i <= 30; i++ {
		if i%5 == 0 {
			stderr = append(stderr, fmt.Sprintf("err %d", i))
		} else {
			stdout = append(stdout, fmt.Sprintf("out %d", i))
		}
	}
	return stdout, stderr
}

// followCLI runs `sandq logs ID --follow` with args and reads its stdout
// line by line, noting for each line whether the job was still active
// when it arrived (asked of state).
func followCLI(t *testing.T, state func() jobs.State, args ...string) (lines []string, whileActive int, stderr string) {
	t.Helper()
	cmd := exec.Command(sandqBin(t), args...)
	cmd.Env = sandqEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errBuf strings.Builder
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(3*time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if state() == jobs.StateActive {
			whileActive++
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sandq %s: %v\nstdout so far: %q\nstderr: %s", strings.Join(args, " "), err, lines, errBuf.String())
	}
	return lines, whileActive, errBuf.String()
}

// The CLI's `sandq logs --follow` prints a running Python job's output as
// it is written, through Redis and through the API server; the API's event
// stream carries it as log events before the job's end; a late follower
// gets the backlog, and one resuming with Last-Event-ID gets only what
// came after.
func TestFollowingAJobsOutputLive(t *testing.T) {
	sandqBin(t) // built before the jobs start, not while they run
	url, tok := apiServer(t)
	ac, err := api.NewClient(url, tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	wantOut, wantErr := liveLines()
	status := func(get func(context.Context, string) (*jobs.JobStatus, error), id string) func() jobs.State {
		return func() jobs.State {
			st, err := get(ctx, id)
			if err != nil {
				t.Errorf("status of %s: %v", id, err)
				return ""
			}
			return st.State
		}
	}

	// Through Redis, and through the server (a job of the API's tenant),
	// at the same time.
	direct := submit(t, jobs.Submission{Script: file(t, "live.py", liveScript)})
	served, err := ac.Enqueue(ctx, jobs.Submission{Script: file(t, "live.py", liveScript), Queue: "default"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var sseLogs []sseEvent
	var sseWhileActive int
	wg.Add(1)
	go func() {
		defer wg.Done()
		sseLogs, sseWhileActive = followSSE(t, url, tok, served.ID, "", status(env.client.Status, served.ID))
	}()
	lines, active, _ := followCLI(t, status(env.client.Status, direct.ID), "logs", direct.ID, "--follow")
	if strings.Join(lines, "\n") != strings.Join(wantOut, "\n") {
		t.Errorf("sandq logs --follow (Redis) printed on stdout:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(wantOut, "\n"))
	}
	if active < 5 {
		t.Errorf("sandq logs --follow (Redis): %d of %d lines arrived while the job was active, want most", active, len(lines))
	}
	servedLines, servedActive, _ := followCLI(t, status(env.client.Status, served.ID), "logs", served.ID, "--follow", "--server", url, "--token", tok, "--redis-addr", "127.0.0.1:1")
	if strings.Join(servedLines, "\n") != strings.Join(wantOut, "\n") {
		t.Errorf("sandq logs --follow --server printed on stdout:\n%s\nwant:\n%s", strings.Join(servedLines, "\n"), strings.Join(wantOut, "\n"))
	}
	wg.Wait()
	t.Logf("lines heard while the job ran: Redis %d of %d, server (CLI started after the SSE) %d of %d, SSE %d of %d events",
		active, len(lines), servedActive, len(servedLines), sseWhileActive, len(sseLogs))

	// The event stream: every line, each stream's in the order written
	// (Python's stdout is flushed every 100 ms, so a stderr line may pass
	// a stdout line written just before it: the order across the streams
	// is the shell's test, TestLiveOutputWhileTheJobRuns), most of it
	// before the job's end.
	got := map[string][]string{}
	for _, e := range sseLogs {
		if e.log.Stream != "" {
			got[e.log.Stream] = append(got[e.log.Stream], strings.Split(strings.TrimSuffix(e.log.Data, "\n"), "\n")...)
		}
	}
	if strings.Join(got["stdout"], "\n") != strings.Join(wantOut, "\n") || strings.Join(got["stderr"], "\n") != strings.Join(wantErr, "\n") {
		t.Fatalf("log events: stdout %q, stderr %q; want %q, %q", got["stdout"], got["stderr"], wantOut, wantErr)
	}
	if sseWhileActive < 5 {
		t.Errorf("%d of %d log events came while the job was active, want most", sseWhileActive, len(sseLogs))
	}

	// A late follower gets the backlog: stdout on stdout, stderr on stderr.
	out, errOut, code := sandq(t, "logs", direct.ID)
	if code != 0 || strings.TrimSpace(out) != strings.Join(wantOut, "\n") {
		t.Errorf("sandq logs of a finished job: exit %d, stdout %q", code, out)
	}
	for _, l := range wantErr {
		if !strings.Contains(errOut, l+"\n") {
			t.Errorf("sandq logs of a finished job: stderr lacks %q: %q", l, errOut)
		}
	}
	// Resuming after the tenth log event gives the rest, and only that.
	resumed, _ := followSSE(t, url, tok, served.ID, sseLogs[9].id, status(env.client.Status, served.ID))
	if len(resumed) != len(sseLogs)-10 || len(resumed) == 0 || resumed[0].id != sseLogs[10].id {
		t.Fatalf("resumed after %s: %d log events starting %+v; want the %d after it", sseLogs[9].id, len(resumed), resumed, len(sseLogs)-10)
	}
}

type sseEvent struct {
	id  string
	log jobs.LogEvent
}

// followSSE reads a job's event stream (resuming after lastID when set)
// until its done event, and returns the log events (markers included) and
// how many came while the job was active (asked of state as each came).
func followSSE(t *testing.T, url, tok, id, lastID string, state func() jobs.State) ([]sseEvent, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/jobs/"+id+"/events", nil)
	if err != nil {
		t.Error(err)
		return nil, 0
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return nil, 0
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("events of %s: %s", id, resp.Status)
		return nil, 0
	}
	var logs []sseEvent
	active := 0
	var ev, evID string
	var data strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			ev = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "id: "):
			evID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data.WriteString(strings.TrimPrefix(line, "data: "))
		case line == "":
			switch ev {
			case "log":
				var e jobs.LogEvent
				if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
					t.Errorf("log event %q: %v", data.String(), err)
				}
				if e.ID != evID {
					t.Errorf("log event's id %q, its entry's %q", evID, e.ID)
				}
				logs = append(logs, sseEvent{evID, e})
				if state() == jobs.StateActive {
					active++
				}
			case "done":
				return logs, active
			}
			ev, evID = "", ""
			data.Reset()
		}
	}
	t.Errorf("events of %s ended without a done event: %v", id, sc.Err())
	return logs, active
}
