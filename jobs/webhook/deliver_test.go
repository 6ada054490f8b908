package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var allowLoopback = Guard{AllowPrivate: true}

type received struct {
	header http.Header
	body   []byte
}

// recorder is a loopback receiver that keeps every request it gets.
type recorder struct {
	mu   sync.Mutex
	reqs []received
}

func (rc *recorder) add(r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reqs = append(rc.reqs, received{r.Header.Clone(), b})
}

func (rc *recorder) all() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestDeliverSignsEachAttempt(t *testing.T) {
	rc := &recorder{}
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		rc.add(r)
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "thanks")
	})
	oldSecret, newSecret := mustSecret(t), mustSecret(t)
	secrets := []string{oldSecret, newSecret}
	body := []byte(`{"id":"job-7","status":"succeeded","exit_code":0}`)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	d := &Deliverer{Guard: allowLoopback, Now: func() time.Time { return now }, Logger: testLogger(t)}

	first := d.Deliver(context.Background(), srv.URL+"/hook?token=abc", secrets, "evt_job-7", body)
	now = t0.Add(90 * time.Second)
	second := d.Deliver(context.Background(), srv.URL+"/hook?token=abc", secrets, "evt_job-7", body)

	for i, a := range []Attempt{first, second} {
		if a.Outcome != OutcomeDelivered || a.StatusCode != 200 || a.Error != "" {
			t.Fatalf("attempt %d = %+v, want delivered 200", i+1, a)
		}
		if a.ResponseBytes != int64(len("thanks")) {
			t.Errorf("attempt %d read %d response bytes, want %d", i+1, a.ResponseBytes, len("thanks"))
		}
	}
	if !first.Time.Equal(t0) || !second.Time.Equal(t0.Add(90*time.Second)) {
		t.Errorf("attempt times %s, %s: want the injected clock", first.Time, second.Time)
	}
	reqs := rc.all()
	if len(reqs) != 2 {
		t.Fatalf("server got %d requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		at := t0.Add(time.Duration(i) * 90 * time.Second)
		if got := r.header.Get("webhook-id"); got != "evt_job-7" {
			t.Errorf("request %d webhook-id = %q", i+1, got)
		}
		if got, want := r.header.Get("webhook-timestamp"), strconv.FormatInt(at.Unix(), 10); got != want {
			t.Errorf("request %d webhook-timestamp = %q, want %q (from Now)", i+1, got, want)
		}
		if got := r.header.Get("Content-Type"); got != "application/json" {
			t.Errorf("request %d Content-Type = %q", i+1, got)
		}
		if got := r.header.Get("User-Agent"); got != "sandq-webhook/1" {
			t.Errorf("request %d User-Agent = %q", i+1, got)
		}
		if !bytes.Equal(r.body, body) {
			t.Errorf("request %d body = %q", i+1, r.body)
		}
		if n := len(strings.Fields(r.header.Get("webhook-signature"))); n != 2 {
			t.Errorf("request %d carries %d signatures, want 2 (two secrets)", i+1, n)
		}
		for _, s := range secrets {
			if err := Verify([]string{s}, r.header, r.body, at); err != nil {
				t.Errorf("request %d does not verify with one of the secrets: %v", i+1, err)
			}
		}
	}
	if reqs[0].header.Get("webhook-signature") == reqs[1].header.Get("webhook-signature") {
		t.Error("both attempts carry the same signature; each should be signed afresh")
	}
}

func TestDeliverStatuses(t *testing.T) {
	// The receiver answers /status/<code>, with a Retry-After from ?ra=.
	rc := &recorder{}
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		rc.add(r)
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if ra := r.URL.Query().Get("ra"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(code)
	})
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := &Deliverer{Guard: allowLoopback, Now: func() time.Time { return t0 }}
	secrets := []string{mustSecret(t)}
	cases := []struct {
		code       int
		ra         string
		outcome    string
		retryAfter time.Duration
		says       string
	}{
		{200, "", OutcomeDelivered, 0, ""},
		{202, "", OutcomeDelivered, 0, ""},
		{204, "", OutcomeDelivered, 0, ""},
		{500, "", OutcomeRetry, 0, "500 Internal Server Error"},
		{500, "5", OutcomeRetry, 0, "500"}, // Retry-After counts on 429 and 503 only
		{502, "", OutcomeRetry, 0, "502"},
		{503, "7", OutcomeRetry, 7 * time.Second, "503"},
		{408, "", OutcomeRetry, 0, "408"},
		{429, "2", OutcomeRetry, 2 * time.Second, "429 Too Many Requests"},
		{429, t0.Add(90 * time.Second).Format(http.TimeFormat), OutcomeRetry, 90 * time.Second, "429"},
		{429, t0.Add(-time.Hour).Format(http.TimeFormat), OutcomeRetry, 0, "429"},
		{429, "soon", OutcomeRetry, 0, "429"},
		{429, "999999999", OutcomeRetry, MaxDelay, "429"},
		{410, "", OutcomeGone, 0, "410 Gone"},
		{400, "", OutcomeFailed, 0, "400 Bad Request; not retried"},
		{401, "", OutcomeFailed, 0, "401"},
		{404, "", OutcomeFailed, 0, "404"},
		{304, "", OutcomeFailed, 0, "redirects are not followed"},
	}
	for _, c := range cases {
		u := srv.URL + "/status/" + strconv.Itoa(c.code)
		if c.ra != "" {
			u += "?ra=" + url.QueryEscape(c.ra)
		}
		a := d.Deliver(context.Background(), u, secrets, "evt_s", []byte(`{}`))
		if a.StatusCode != c.code || a.Outcome != c.outcome || a.RetryAfter != c.retryAfter || !strings.Contains(a.Error, c.says) {
			t.Errorf("%d (Retry-After %q): got %+v, want outcome %s, RetryAfter %s, error containing %q", c.code, c.ra, a, c.outcome, c.retryAfter, c.says)
		}
		if (c.outcome == OutcomeDelivered) != (a.Error == "") {
			t.Errorf("%d: error %q", c.code, a.Error)
		}
	}
	if n := len(rc.all()); n != len(cases) {
		t.Errorf("server got %d requests, want %d", n, len(cases))
	}
}

func TestDeliverDoesNotFollowRedirects(t *testing.T) {
	target, targetConns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("redirect target requested: %s %s", r.Method, r.URL)
	})
	for _, code := range []int{301, 302, 303, 307, 308} {
		redirector, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/stolen", code)
		})
		d := &Deliverer{Guard: allowLoopback}
		a := d.Deliver(context.Background(), redirector.URL+"/hook", []string{mustSecret(t)}, "evt_r", []byte(`{}`))
		if a.Outcome != OutcomeFailed || a.StatusCode != code || !strings.Contains(a.Error, "redirects are not followed") {
			t.Errorf("%d: %+v, want a failed attempt that does not follow", code, a)
		}
	}
	if n := targetConns.Load(); n != 0 {
		t.Errorf("redirect target got %d connections, want 0", n)
	}
}

func TestDeliverTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	// A receiver that reads the request and never answers.
	stop := make(chan struct{})
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so the server notices the client leave
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before srv.Close
	// A TCP peer that accepts and never speaks HTTP at all.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	t.Cleanup(func() { ln.Close(); held.Wait() })
	held.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})

	d := &Deliverer{Guard: allowLoopback, Timeout: timeout}
	for name, u := range map[string]string{"handler never answers": srv.URL + "/hook", "peer never speaks HTTP": "http://" + ln.Addr().String() + "/hook"} {
		start := time.Now()
		a := d.Deliver(context.Background(), u, []string{mustSecret(t)}, "evt_t", []byte(`{}`))
		elapsed := time.Since(start)
		t.Logf("%s: returned after %s (DurationMS %d, Timeout %s): %+v", name, elapsed, a.DurationMS, timeout, a)
		if a.Outcome != OutcomeRetry || a.StatusCode != 0 || !strings.Contains(a.Error, "timeout") || !strings.Contains(a.Error, timeout.String()) {
			t.Errorf("%s: %+v, want a retry whose error names the %s timeout", name, a, timeout)
		}
	}
}

func TestDeliverTimeoutIsCapped(t *testing.T) {
	d := &Deliverer{Timeout: time.Hour}
	if got := d.timeout(); got != MaxTimeout {
		t.Errorf("Timeout 1h is used as %s, want %s", got, MaxTimeout)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "at most 15s") {
		t.Errorf("Validate = %v", err)
	}
	if err := (&Deliverer{}).Validate(); err != nil {
		t.Errorf("zero Deliverer: %v", err)
	}
}

func TestDeliverReadsAtMostMaxBody(t *testing.T) {
	const maxBody = 100_000
	handlerDone := make(chan int64, 1)
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		var sent int64
		defer func() { handlerDone <- sent }()
		for {
			n, err := w.Write(chunk)
			sent += int64(n)
			if err != nil {
				return // the client went away
			}
		}
	})
	d := &Deliverer{Guard: allowLoopback, MaxBody: maxBody}
	start := time.Now()
	a := d.Deliver(context.Background(), srv.URL+"/hook", []string{mustSecret(t)}, "evt_b", []byte(`{}`))
	t.Logf("endless body: returned after %s: %+v", time.Since(start), a)
	if a.Outcome != OutcomeDelivered || a.Error != "" {
		t.Fatalf("%+v, want delivered", a)
	}
	if a.ResponseBytes != maxBody {
		t.Errorf("read %d response bytes, want exactly MaxBody %d", a.ResponseBytes, maxBody)
	}
	select {
	case sent := <-handlerDone:
		t.Logf("the server wrote %d bytes before the client closed the connection", sent)
	case <-time.After(10 * time.Second):
		t.Error("the server is still writing 10s after Deliver returned: the connection was not closed")
	}
}

func TestDeliverConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	d := &Deliverer{Guard: allowLoopback}
	a := d.Deliver(context.Background(), "http://"+addr+"/hook?token=s3cr3t", []string{mustSecret(t)}, "evt_c", []byte(`{}`))
	t.Logf("%+v", a)
	if a.Outcome != OutcomeRetry || !strings.Contains(a.Error, "connection refused") {
		t.Errorf("%+v, want a retry saying connection refused", a)
	}
	if strings.Contains(a.Error, "s3cr3t") {
		t.Errorf("error %q repeats the URL's query", a.Error)
	}
}

func TestDeliverGuardRefusesLoopback(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	d := &Deliverer{} // default Guard: no private addresses
	for _, u := range []string{srv.URL + "/hook", "http://localhost:" + port + "/hook"} {
		a := d.Deliver(context.Background(), u, []string{mustSecret(t)}, "evt_g", []byte(`{}`))
		t.Logf("%s: %+v", u, a)
		if a.Outcome != OutcomeFailed || !strings.Contains(a.Error, "loopback") {
			t.Errorf("%s: %+v, want a failed attempt naming loopback", u, a)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("server accepted %d connections, want 0", n)
	}
}

func TestDeliverBadInput(t *testing.T) {
	d := &Deliverer{Guard: allowLoopback}
	secret := mustSecret(t)
	for _, c := range []struct {
		url     string
		secrets []string
		says    string
	}{
		{"ftp://example.com/", []string{secret}, `scheme "ftp"`},
		{"not a url", []string{secret}, "no scheme"},
		{"http://127.0.0.1:1/", nil, "no webhook secret"},
		{"http://127.0.0.1:1/", []string{"whsec_short"}, "webhook secret"},
	} {
		a := d.Deliver(context.Background(), c.url, c.secrets, "evt_x", []byte(`{}`))
		if a.Outcome != OutcomeFailed || !strings.Contains(a.Error, c.says) {
			t.Errorf("%q: %+v, want failed saying %q", c.url, a, c.says)
		}
	}
}

func TestDeliverParentCanceled(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(50*time.Millisecond, func() { cancel(errors.New("worker shutting down")) })
	a := (&Deliverer{Guard: allowLoopback}).Deliver(ctx, srv.URL, []string{mustSecret(t)}, "evt_p", []byte(`{}`))
	if a.Outcome != OutcomeRetry || !strings.Contains(a.Error, "worker shutting down") {
		t.Errorf("%+v, want a retry naming the cancel cause", a)
	}
}

func TestAttemptJSON(t *testing.T) {
	a := Attempt{Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), StatusCode: 429, Error: "the receiver answered 429 Too Many Requests", DurationMS: 12, Outcome: OutcomeRetry, RetryAfter: time.Minute}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"2026-03-01T12:00:00Z","status_code":429,"error":"the receiver answered 429 Too Many Requests","duration_ms":12,"outcome":"retry"}`
	if string(b) != want {
		t.Errorf("JSON = %s\nwant   %s", b, want)
	}
}
