package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Delivery defaults and limits.
const (
	DefaultTimeout   = 15 * time.Second // also the maximum
	MaxTimeout       = 15 * time.Second
	DefaultMaxBody   = 64 << 10
	DefaultUserAgent = "sandq-webhook/1"
)

// Outcomes of an attempt.
const (
	OutcomeDelivered = "delivered" // 2xx
	OutcomeRetry     = "retry"     // connection error, timeout, 5xx, 408, 429
	OutcomeFailed    = "failed"    // 3xx, 4xx other than 408/410/429, bad URL or secret, refused address: no retry
	OutcomeGone      = "gone"      // 410: the receiver asks for no more webhooks
)

// Deliverer makes delivery attempts. The zero value is ready to use; fields
// may not change while Deliver runs.
type Deliverer struct {
	Guard     Guard
	Timeout   time.Duration    // per request, connect to last response byte read; default and maximum 15s
	MaxBody   int64            // response body read cap, default 64 KiB
	UserAgent string           // default "sandq-webhook/1"
	Now       func() time.Time // injectable clock for webhook-timestamp, Attempt.Time and Retry-After dates; default time.Now
	Logger    *slog.Logger     // optional; one Debug record per attempt
	Resolver  *net.Resolver    // resolves receiver names; default net.DefaultResolver
}

// Attempt is the record of one delivery attempt, kept in the delivery log.
type Attempt struct {
	Time          time.Time     `json:"time"`
	StatusCode    int           `json:"status_code,omitempty"`
	Error         string        `json:"error,omitempty"`
	DurationMS    int64         `json:"duration_ms"`
	Outcome       string        `json:"outcome"`
	ResponseBytes int64         `json:"response_bytes,omitempty"` // response body bytes read (at most MaxBody)
	RetryAfter    time.Duration `json:"-"`                        // from a 429/503 Retry-After header, 0 if none
	// Detail is what Error leaves out for the producer's sake (the
	// addresses a name resolved to, the worker's own address): for the
	// worker's log only, never stored in the delivery log.
	Detail string `json:"-"`
}

// Validate reports settings Deliver would have to correct.
func (d *Deliverer) Validate() error {
	switch {
	case d.Timeout < 0 || d.Timeout > MaxTimeout:
		return fmt.Errorf("webhook timeout %s is out of range: it must be at most %s (0 means %s)", d.Timeout, MaxTimeout, DefaultTimeout)
	case d.MaxBody < 0:
		return fmt.Errorf("webhook response body cap %d is negative (0 means %d)", d.MaxBody, DefaultMaxBody)
	}
	return nil
}

func (d *Deliverer) timeout() time.Duration {
	if d.Timeout <= 0 || d.Timeout > MaxTimeout {
		return DefaultTimeout
	}
	return d.Timeout
}

func (d *Deliverer) now() time.Time {
	if d.Now == nil {
		return time.Now()
	}
	return d.Now()
}

var errAttemptTimeout = errors.New("webhook attempt timed out")

// Deliver makes one attempt: it POSTs body to rawURL with fresh headers (the
// timestamp and signature are made now, the id is the caller's, the same for
// every attempt of one event). Any 2xx is delivered. Redirects are not
// followed: a 3xx fails without retry. Connection errors, timeouts, 5xx, 408
// and 429 are retried; 410 is gone; other 4xx fail. The response body is
// read up to MaxBody and discarded. Error never repeats the URL, whose
// query may hold a token, nor an IP address the receiver's name resolved to
// or the worker's own (Detail has them, for the worker's log).
//
// The URL is checked as Guard.CheckURL does without resolving (scheme,
// host spelling, refused literal addresses) first: a URL that could never
// be delivered fails at once, without a retry.
//
// Each attempt uses its own transport without keep-alive and without any
// proxy from the environment, dialing through Guard.DialContext.
// DurationMS is measured on the real clock, whatever Now is.
func (d *Deliverer) Deliver(ctx context.Context, rawURL string, secrets []string, id string, body []byte) Attempt {
	timeout := d.timeout()
	maxBody := d.MaxBody
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	ua := d.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	now := d.now()
	began := time.Now()
	a := Attempt{Time: now}

	a.Outcome, a.Error = func() (string, string) {
		if err := d.Guard.CheckURL(ctx, nil, rawURL); err != nil {
			var blocked *BlockedAddressError
			if errors.As(err, &blocked) {
				a.Detail = blocked.Detail()
			}
			return OutcomeFailed, err.Error()
		}
		h, err := Headers(secrets, id, now, body)
		if err != nil {
			return OutcomeFailed, err.Error()
		}
		reqCtx, cancel := context.WithTimeoutCause(ctx, timeout, errAttemptTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, rawURL, bytes.NewReader(body))
		if err != nil {
			return OutcomeFailed, "cannot build the request: " + unwrapURLError(err).Error()
		}
		req.Header = h
		req.Header.Set("User-Agent", ua)

		tr := &http.Transport{
			Proxy:                  nil, // never HTTP(S)_PROXY: the guard must see the real address
			DialContext:            d.Guard.dialContext(timeout, d.Resolver),
			ForceAttemptHTTP2:      true,
			DisableKeepAlives:      true,
			TLSHandshakeTimeout:    timeout,
			MaxResponseHeaderBytes: 64 << 10,
		}
		defer tr.CloseIdleConnections()
		client := &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		resp, err := client.Do(req)
		if err != nil {
			a.Detail = unwrapURLError(err).Error()
			var blocked *BlockedAddressError
			if errors.As(err, &blocked) {
				a.Detail = blocked.Detail()
			}
			return classifyError(ctx, reqCtx, err, timeout)
		}
		n, _ := io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		a.ResponseBytes = n
		a.StatusCode = resp.StatusCode
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			a.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
		}
		return classifyStatus(resp.StatusCode)
	}()
	a.DurationMS = time.Since(began).Milliseconds()

	if d.Logger != nil {
		d.Logger.LogAttrs(ctx, slog.LevelDebug, "webhook attempt",
			slog.String("webhook_id", id), slog.String("outcome", a.Outcome),
			slog.Int("status_code", a.StatusCode), slog.Int64("duration_ms", a.DurationMS),
			slog.String("error", a.Error), slog.String("detail", a.Detail), slog.Duration("retry_after", a.RetryAfter))
	}
	return a
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// classifyError turns a request error into an outcome and a message that
// names no IP address.
func classifyError(parent, reqCtx context.Context, err error, timeout time.Duration) (string, string) {
	var blocked *BlockedAddressError
	if errors.As(err, &blocked) {
		return OutcomeFailed, blocked.Error()
	}
	if parent.Err() != nil {
		return OutcomeRetry, fmt.Sprintf("attempt interrupted: %v", context.Cause(parent))
	}
	var ne net.Error
	if errors.Is(context.Cause(reqCtx), errAttemptTimeout) || (errors.As(err, &ne) && ne.Timeout()) {
		return OutcomeRetry, fmt.Sprintf("no response within the %s timeout", timeout)
	}
	return OutcomeRetry, describeNetError(err)
}

// describeNetError says what went wrong without the addresses Go's network
// errors carry: "lookup h on 10.0.0.2:53" names the worker's resolver,
// "dial tcp 10.1.2.3:443" what the name resolved to, "read tcp
// 10.0.0.7:5555->..." the worker's own address.
func describeNetError(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		what := dnsErr.Err
		if dnsErr.IsNotFound {
			what = "no such host"
		}
		return fmt.Sprintf("cannot resolve the webhook host %s: %s", dnsErr.Name, scrubAddrs(what))
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		verb := map[string]string{"dial": "connect to", "read": "read from", "write": "write to"}[opErr.Op]
		if verb == "" {
			verb = opErr.Op + " with"
		}
		return fmt.Sprintf("cannot %s the receiver: %s", verb, scrubAddrs(opErr.Err.Error()))
	}
	return scrubAddrs(unwrapURLError(err).Error())
}

// scrubAddrs replaces every IP address (with or without a port) in msg by
// "<address>".
func scrubAddrs(msg string) string {
	isAddrChar := func(c byte) bool {
		return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':' || c == '[' || c == ']'
	}
	var b strings.Builder
	for i := 0; i < len(msg); {
		if !isAddrChar(msg[i]) {
			b.WriteByte(msg[i])
			i++
			continue
		}
		j := i
		for j < len(msg) && isAddrChar(msg[j]) {
			j++
		}
		run := msg[i:j]
		core := strings.TrimRight(run, ":.")
		if looksLikeAddr(core) {
			b.WriteString("<address>")
			b.WriteString(run[len(core):])
		} else {
			b.WriteString(run)
		}
		i = j
	}
	return b.String()
}

func looksLikeAddr(s string) bool {
	if _, err := netip.ParseAddrPort(s); err == nil {
		return true
	}
	_, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return err == nil
}

func classifyStatus(code int) (string, string) {
	status := strconv.Itoa(code)
	if t := http.StatusText(code); t != "" {
		status += " " + t
	}
	switch {
	case code >= 200 && code <= 299:
		return OutcomeDelivered, ""
	case code >= 300 && code <= 399:
		return OutcomeFailed, "the receiver answered " + status + ", a redirect; redirects are not followed"
	case code == http.StatusGone:
		return OutcomeGone, "the receiver answered " + status + ": it asks for no more webhooks"
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		return OutcomeRetry, "the receiver answered " + status
	case code >= 400 && code <= 499:
		return OutcomeFailed, "the receiver answered " + status + "; not retried"
	case code >= 500:
		return OutcomeRetry, "the receiver answered " + status
	}
	return OutcomeFailed, "the receiver answered " + status + ", which is not a final status"
}

// parseRetryAfter reads a Retry-After value, in seconds or as an HTTP date
// relative to now; 0 when absent, unparsable or past; at most MaxDelay.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(MaxDelay/time.Second) {
			return MaxDelay
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return min(max(t.Sub(now), 0), MaxDelay)
}
