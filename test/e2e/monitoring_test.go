package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

// TestMonitoringDashboardInChromium runs a job, then opens the asynqmon
// dashboard that api serves in a real headless Chromium and checks that the
// React app rendered the queue and the finished job from Redis.
func TestMonitoringDashboardInChromium(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v); `make test` installs it (scripts/install-deps.sh)", err)
	}

	// "other" is a queue the e2e worker serves that few tests use, so the
	// job is on the first page of its completed tasks.
	const queue = "other"
	marker := fmt.Sprintf("dashboard-marker-%d", time.Now().UnixNano())
	enq := submit(t, jobs.Submission{Script: file(t, "dash.sh", "echo "+marker), Queue: queue})
	r := waitResult(t, enq.ID, 3*time.Minute)
	wantStatus(t, r, jobs.StatusSucceeded)

	srv, err := api.New(api.Config{Jobs: env.cfg, Store: env.store, OpenMonitoring: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv)
	defer hs.Close()

	// The completed tasks of the queue: asynqmon's route
	// {root}/queues/:qname?status=completed. The ID cell shows only the
	// part of the ID before its first dash; the full ID is in the payload
	// and result cells (the job's result document, shown as JSON).
	listURL := hs.URL + "/monitoring/queues/" + queue + "?status=completed"
	dom := dumpDOM(t, browser, listURL, queue, enq.ID, marker)
	if !strings.Contains(dom, `"succeeded"`) {
		t.Errorf("the completed tasks page does not show the job's status:\n%s", tail(dom, 4000))
	}

	// The overview lists every queue, each a link to its page.
	overview := dumpDOM(t, browser, hs.URL+"/monitoring/", `href="/monitoring/queues/`+queue+`"`)
	if !strings.Contains(overview, ">"+queue+"<") {
		t.Errorf("the queues overview does not name queue %q:\n%s", queue, tail(overview, 4000))
	}

	// One file, overwritten by each run: the latest screenshot to look at.
	shot := filepath.Join(os.TempDir(), "sandq-dashboard.png")
	screenshot(t, browser, listURL, shot)
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 20<<10 {
		t.Fatalf("screenshot %s is not a rendered page: %d bytes, starts %q", shot, len(png), png[:min(len(png), 8)])
	}
	t.Logf("screenshot of %s: %s (%d bytes)", listURL, shot, len(png))
}

// TestDashboardRefusesCrossSiteInChromium is the reported attack in a real
// browser: a page on another site POSTs "pause" to an open dashboard (no
// preflight is needed for a no-cors request). The browser sends it; the
// server refuses it, and the queue keeps running.
func TestDashboardRefusesCrossSiteInChromium(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v); `make test` installs it (scripts/install-deps.sh)", err)
	}
	queue := fmt.Sprintf("xsite%d", time.Now().UnixNano()%1e9)
	rdb := asynq.RedisClientOpt{Addr: env.stack.RedisAddr}
	c := asynq.NewClient(rdb)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("job:run", []byte(`{}`)), asynq.Queue(queue)); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(rdb)
	defer insp.Close()
	defer insp.DeleteQueue(queue, true)

	srv, err := api.New(api.Config{Jobs: env.cfg, Store: env.store, OpenMonitoring: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var mu sync.Mutex
	var seen []string
	dash := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ":pause") {
			mu.Lock()
			seen = append(seen, r.Method+" Sec-Fetch-Site="+r.Header.Get("Sec-Fetch-Site")+" Origin="+r.Header.Get("Origin"))
			mu.Unlock()
		}
		srv.ServeHTTP(w, r)
	}))
	defer dash.Close()
	// The attacker's page, on another site: localhost, not 127.0.0.1.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<html><body><script>
fetch(%q, {method: "POST", mode: "no-cors"}).then(() => { document.body.dataset.sent = "yes" }, e => { document.body.dataset.sent = "error " + e })
</script></body></html>`, dash.URL+"/monitoring/api/queues/"+queue+":pause")
	}))
	defer evil.Close()
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
	// The page's fetch settles either way: with an opaque answer, or with
	// a network error (the dashboard's answers are same-origin resources).
	dom := dumpDOM(t, browser, evilURL, `data-sent=`)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || !strings.Contains(seen[0], "Sec-Fetch-Site=cross-site") {
		t.Fatalf("the browser's request to the dashboard: %v\n%s", seen, tail(dom, 2000))
	}
	info, err := insp.GetQueueInfo(queue)
	if err != nil {
		t.Fatal(err)
	}
	if info.Paused {
		t.Fatalf("a page on another site paused queue %s through the dashboard (%v)", queue, seen)
	}
}

// dumpDOM loads url in headless Chromium and returns the DOM once it
// contains every one of want. The dashboard is a single-page app that
// fetches from its API after loading, so a dump that came too early is
// retried with a longer virtual time budget.
func dumpDOM(t *testing.T, browser, url string, want ...string) string {
	t.Helper()
	var dom string
	var missing []string
	for attempt, budget := range []int{15000, 30000, 60000} {
		out, err := runChromium(t, browser, "--virtual-time-budget="+fmt.Sprint(budget), "--dump-dom", url)
		if err != nil {
			t.Fatalf("chromium --dump-dom %s: %v", url, err)
		}
		dom = out
		missing = missing[:0]
		for _, w := range want {
			if !strings.Contains(dom, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return dom
		}
		t.Logf("attempt %d: %s lacks %q; retrying", attempt+1, url, missing)
	}
	t.Fatalf("the DOM of %s lacks %q:\n%s", url, missing, tail(dom, 4000))
	return ""
}

func screenshot(t *testing.T, browser, url, path string) {
	t.Helper()
	if _, err := runChromium(t, browser, "--virtual-time-budget=15000", "--window-size=1400,900", "--screenshot="+path, url); err != nil {
		t.Fatalf("chromium --screenshot %s: %v", url, err)
	}
}

// runChromium runs one headless Chromium with its own profile and returns
// its stdout. Chromium and every process it started are killed when it
// exits or overruns its time.
func runChromium(t *testing.T, browser string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	profile := t.TempDir()
	args = append([]string{
		"--headless=new",
		"--no-sandbox", // tests run as root, where Chromium's sandbox refuses to start
		"--disable-gpu",
		"--disable-dev-shm-usage",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-extensions",
		"--disable-background-networking",
		"--disable-sync",
		"--disable-component-update",
		"--user-data-dir=" + profile,
	}, args...)
	cmd := exec.CommandContext(ctx, browser, args...)
	cmd.Env = append(os.Environ(), "HOME="+profile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	err := cmd.Wait()
	// Whatever Chromium left in its process group goes with it.
	if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
		t.Errorf("kill chromium's process group: %v", kerr)
	}
	if err != nil {
		return "", fmt.Errorf("%w (%v)\nstderr: %s", err, context.Cause(ctx), tail(stderr.String(), 2000))
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
