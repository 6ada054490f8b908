package chaos

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandq/sandq/jobs"
)

// connGauge counts a listener's open connections, the most at once, and
// those the other side closed (the worker giving up on an attempt).
type connGauge struct {
	mu                  sync.Mutex
	open, most, dropped int
}

func (g *connGauge) stats() (open, most, dropped int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open, g.most, g.dropped
}

// tarPit accepts connections on ip and never answers: each one is held
// until the worker's attempt times out and closes it.
func tarPit(t *testing.T, ip string) (string, *connGauge) {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	g := &connGauge{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.open++
			g.most = max(g.most, g.open)
			g.mu.Unlock()
			go func() {
				io.Copy(io.Discard, c) // until the worker closes it
				c.Close()
				g.mu.Lock()
				g.open--
				g.dropped++
				g.mu.Unlock()
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/hook", g
}

// endlessBody answers 200 with a body that never ends.
func endlessBody(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
		chunk := make([]byte, 32<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/hook"
}

// TestHostileWebhookReceivers queues, all at once, deliveries to a tar pit
// (accepts, never answers) and to a receiver whose body never ends, ahead
// of deliveries to the suite's honest receiver, on a `sandq worker` with
// the default delivery concurrency: the honest events arrive before any
// tar-pit attempt has timed out, the tar pit never holds more than the
// per-host cap of the worker's slots, and an endless body is read up to the
// cap and counted delivered. The CLI refuses a webhook URL whose host is an
// IP address in another spelling, naming the field.
func TestHostileWebhookReceivers(t *testing.T) {
	const q = "chaos-webhooks"
	const hostCap = 4 // the default: a quarter of the default concurrency, 16
	ctx := context.Background()
	insp := inspector(t)
	var hostile []string
	// Runs after the worker stops (cleanups run in reverse): no delivery
	// to a receiver that is gone is left retrying for the next scenario.
	t.Cleanup(func() {
		for _, id := range hostile {
			insp.DeleteTask("webhooks", "wh-"+id)
		}
		insp.UnpauseQueue("webhooks")
	})
	startWorker(t, "webhooks", workerOpts{queues: q, concurrency: 2})

	// The CLI refuses other spellings of IP addresses before uploading.
	never := filepath.Join(t.TempDir(), "never.sh")
	if err := os.WriteFile(never, []byte("echo never\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"0x7f.1", "2130706433", "0177.0.0.1", "[::1%25lo]"} {
		cli := exec.Command(env.bin, "enqueue", never, "--queue", q, "--webhook", "http://"+host+":8080/hook")
		cli.Env = workerEnv()
		var stderr bytes.Buffer
		cli.Stderr = &stderr
		cli.Run()
		if code := cli.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "webhook") {
			t.Errorf("sandq enqueue --webhook http://%s:8080/hook: exit %d, stderr %q; want a refusal naming webhook", host, code, stderr.String())
		}
	}

	// Deliveries wait while the jobs run, and then are queued all at once.
	if err := insp.PauseQueue("webhooks"); err != nil {
		t.Fatal(err)
	}
	pit, pitConns := tarPit(t, "127.0.0.4")
	endless := endlessBody(t, "127.0.0.5")
	p := producer(t, q)
	submit := func(url string) string {
		t.Helper()
		enq, err := p.Enqueue(ctx, jobs.Submission{Queue: q, Script: script("x.sh", "echo hi\n"), Webhook: url, Limits: small})
		if err != nil {
			t.Fatal(err)
		}
		return enq.ID
	}
	var endlessIDs, honest []string
	for range 20 {
		hostile = append(hostile, submit(pit))
	}
	for range 3 {
		id := submit(endless)
		endlessIDs = append(endlessIDs, id)
		hostile = append(hostile, id)
	}
	for range 3 {
		honest = append(honest, submit(env.receiver.URL()))
	}
	for _, id := range append(append([]string{}, hostile...), honest...) {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		st, err := p.Wait(wctx, id, nil)
		cancel()
		if err != nil || st.Result == nil {
			t.Fatalf("job %s: %v", id, err)
		}
	}
	if err := insp.UnpauseQueue("webhooks"); err != nil {
		t.Fatal(err)
	}
	unpaused := time.Now()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		n := 0
		for _, id := range honest {
			if len(env.receiver.Deliveries(id)) > 0 {
				n++
			}
		}
		_, _, dropped := pitConns.stats()
		if n == len(honest) {
			t.Logf("the honest receiver had its %d events %s after deliveries resumed; tar-pit attempts timed out by then: %d",
				n, time.Since(unpaused).Round(10*time.Millisecond), dropped)
			if dropped > 0 {
				t.Errorf("the honest events came after %d tar-pit attempts had timed out: the tar pit held them up", dropped)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d honest events arrived in 2m", n, len(honest))
		}
	}
	// Let the tar pit fill what it may, then look at its most at once.
	time.Sleep(3 * time.Second)
	if _, most, _ := pitConns.stats(); most > hostCap || most == 0 {
		t.Errorf("the tar pit held %d connections at once; want 1 to the per-host cap of %d", most, hostCap)
	} else {
		t.Logf("the tar pit held at most %d connections at once", most)
	}
	for _, id := range endlessIDs {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
			st, err := p.Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if ws := st.Webhook; ws != nil && ws.State == "delivered" {
				if len(ws.Attempts) != 1 || ws.Attempts[0].ResponseBytes != 64<<10 {
					t.Errorf("endless body: log %+v, want one delivered attempt that read 64 KiB", ws.Attempts)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("endless body: webhook %+v, want delivered", st.Webhook)
			}
		}
	}
	// The paused queue is the suite's; nothing else of it is ours.
	if qi, err := insp.GetQueueInfo("webhooks"); err == nil && qi.Paused {
		t.Error("the webhook queue is still paused")
	}
}
