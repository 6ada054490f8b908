package webhook

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks published test vector, identical in every language's
// tests of github.com/standard-webhooks/standard-webhooks/libraries@v0.0.1:
// go/webhook_test.go (TestWebhookSign), python/tests/test_webhooks.py
// (test_sign_function), javascript/src/webhook.test.ts ("sign function
// works"), php/tests/WebhookTest.php (testSignFunctionWorks),
// csharp/StandardWebhooks.Tests/WebhookTest.cs, java/.../TestScenario.java
// (validSigned) and ruby/spec/webhook_spec.rb.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorPayload   = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func vectorHeaders() http.Header {
	h := http.Header{}
	h.Set("webhook-id", vectorID)
	h.Set("webhook-timestamp", strconv.Itoa(vectorTimestamp))
	h.Set("webhook-signature", vectorSignature)
	return h
}

func TestSignPublishedVector(t *testing.T) {
	got, err := Sign([]string{vectorSecret}, vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorPayload))
	if err != nil {
		t.Fatal(err)
	}
	if got != vectorSignature {
		t.Fatalf("Sign = %q, the published signature is %q", got, vectorSignature)
	}
	// Sub-second parts of the timestamp are not signed: only Unix seconds are sent.
	got, err = Sign([]string{vectorSecret}, vectorID, time.Unix(vectorTimestamp, 999_000_000), []byte(vectorPayload))
	if err != nil || got != vectorSignature {
		t.Fatalf("Sign with a sub-second timestamp = %q, %v; want %q", got, err, vectorSignature)
	}
}

func TestVerifyPublishedVector(t *testing.T) {
	now := time.Unix(vectorTimestamp, 0).Add(30 * time.Second)
	if err := Verify([]string{vectorSecret}, vectorHeaders(), []byte(vectorPayload), now); err != nil {
		t.Fatalf("Verify rejected the published vector: %v", err)
	}
	// Header names are case-insensitive on the wire.
	h := http.Header{}
	for k, v := range vectorHeaders() {
		h[strings.ToUpper(k)] = v
	}
	h2 := http.Header{}
	for k, v := range h {
		h2.Add(k, v[0]) // canonicalizes again, as net/http does for received requests
	}
	if err := Verify([]string{vectorSecret}, h2, []byte(vectorPayload), now); err != nil {
		t.Fatalf("Verify with upper-case header names: %v", err)
	}
	// The spec's own "wrong version" case: the right signature labelled v2.
	h = vectorHeaders()
	h.Set("webhook-signature", "v2,"+strings.TrimPrefix(vectorSignature, "v1,"))
	if err := Verify([]string{vectorSecret}, h, []byte(vectorPayload), now); !errors.Is(err, ErrNoMatchingSignature) {
		t.Fatalf("v2 signature: err = %v, want ErrNoMatchingSignature", err)
	}
}

func TestHeaders(t *testing.T) {
	ts := time.Unix(vectorTimestamp, 0)
	h, err := Headers([]string{vectorSecret}, vectorID, ts, []byte(vectorPayload))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"webhook-id":        vectorID,
		"webhook-timestamp": "1614265330",
		"webhook-signature": vectorSignature,
		"Content-Type":      "application/json",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if len(h) != len(want) {
		t.Errorf("headers = %v, want exactly %d", h, len(want))
	}
}

// signed returns headers for body signed with secrets at ts.
func signed(t *testing.T, secrets []string, ts time.Time, body []byte) http.Header {
	t.Helper()
	h, err := Headers(secrets, "msg_test", ts, body)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustSecret(t *testing.T) string {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifyRejects(t *testing.T) {
	secret := mustSecret(t)
	other := mustSecret(t)
	body := []byte(`{"id":"job-1","status":"succeeded"}`)
	ts := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ok := signed(t, []string{secret}, ts, body)
	if err := Verify([]string{secret}, ok, body, ts); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	without := func(name string) http.Header {
		h := ok.Clone()
		h.Del(name)
		return h
	}
	with := func(name, val string) http.Header {
		h := ok.Clone()
		h.Set(name, val)
		return h
	}
	cases := []struct {
		name     string
		secrets  []string
		h        http.Header
		body     []byte
		now      time.Time
		sentinel error
		says     string
	}{
		{"tampered body", []string{secret}, ok, []byte(`{"id":"job-1","status":"failed"}`), ts, ErrNoMatchingSignature, "body was changed"},
		{"tampered id", []string{secret}, with("webhook-id", "msg_other"), body, ts, ErrNoMatchingSignature, "no signature"},
		{"too old", []string{secret}, ok, body, ts.Add(Tolerance + time.Second), ErrTimestampTooOld, "older than now"},
		{"too new", []string{secret}, ok, body, ts.Add(-Tolerance - time.Second), ErrTimestampTooNew, "in the future"},
		{"timestamp moved forward", []string{secret}, with("webhook-timestamp", strconv.FormatInt(ts.Unix()+1, 10)), body, ts, ErrNoMatchingSignature, "no signature"},
		{"missing webhook-id", []string{secret}, without("webhook-id"), body, ts, ErrMissingHeader, "webhook-id header is missing"},
		{"missing webhook-timestamp", []string{secret}, without("webhook-timestamp"), body, ts, ErrMissingHeader, "webhook-timestamp header is missing"},
		{"missing webhook-signature", []string{secret}, without("webhook-signature"), body, ts, ErrMissingHeader, "webhook-signature header is missing"},
		{"timestamp not a number", []string{secret}, with("webhook-timestamp", "2026-03-01T12:00:00Z"), body, ts, ErrInvalidTimestamp, "not a Unix time in seconds"},
		{"wrong secret", []string{other}, ok, body, ts, ErrNoMatchingSignature, "secret is wrong"},
		{"empty v1 signature", []string{secret}, with("webhook-signature", "v1,"), body, ts, ErrNoMatchingSignature, "no v1 signature"},
		{"garbage signature", []string{secret}, with("webhook-signature", "invalid_signature"), body, ts, ErrNoMatchingSignature, "no v1 signature"},
		{"no secrets", nil, ok, body, ts, ErrInvalidSecret, "no webhook secret"},
		{"malformed secret", []string{"not-a-secret"}, ok, body, ts, ErrInvalidSecret, "must start with"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Verify(c.secrets, c.h, c.body, c.now)
			if err == nil {
				t.Fatal("Verify accepted it")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, c.sentinel) {
				t.Errorf("error %v does not wrap %v", err, c.sentinel)
			}
			if !strings.Contains(err.Error(), c.says) {
				t.Errorf("error %q does not say %q", err, c.says)
			}
		})
	}
}

func TestVerifyToleranceBoundary(t *testing.T) {
	secret := mustSecret(t)
	body := []byte(`{}`)
	ts := time.Unix(1_800_000_000, 0)
	h := signed(t, []string{secret}, ts, body)
	for _, now := range []time.Time{ts.Add(Tolerance), ts.Add(-Tolerance)} {
		if err := Verify([]string{secret}, h, body, now); err != nil {
			t.Errorf("exactly %s away: %v", now.Sub(ts), err)
		}
	}
}

func TestVerifyRotation(t *testing.T) {
	old, cur, third := mustSecret(t), mustSecret(t), mustSecret(t)
	body := []byte(`{"id":"job-2"}`)
	ts := time.Unix(1_800_000_000, 0)

	// The sender signs with both secrets while the receiver switches over.
	h := signed(t, []string{old, cur}, ts, body)
	sigs := strings.Fields(h.Get("webhook-signature"))
	if len(sigs) != 2 || !strings.HasPrefix(sigs[0], "v1,") || !strings.HasPrefix(sigs[1], "v1,") || sigs[0] == sigs[1] {
		t.Fatalf("webhook-signature = %q, want two different v1 signatures", h.Get("webhook-signature"))
	}
	for name, secrets := range map[string][]string{"old": {old}, "new": {cur}, "both": {cur, old}, "third then new": {third, cur}} {
		if err := Verify(secrets, h, body, ts); err != nil {
			t.Errorf("receiver with the %s secret(s): %v", name, err)
		}
	}
	if err := Verify([]string{third}, h, body, ts); !errors.Is(err, ErrNoMatchingSignature) {
		t.Errorf("receiver with an unrelated secret: err = %v", err)
	}

	// The receiver has both configured; the sender signs with the new one only.
	h = signed(t, []string{cur}, ts, body)
	if err := Verify([]string{old, cur}, h, body, ts); err != nil {
		t.Errorf("receiver with old and new, sender with new: %v", err)
	}
	// Signatures split over two header lines count too.
	h2 := h.Clone()
	h2.Set("webhook-signature", "v1,AAAA")
	h2.Add("webhook-signature", h.Get("webhook-signature"))
	if err := Verify([]string{cur}, h2, body, ts); err != nil {
		t.Errorf("signature on a second header line: %v", err)
	}
}

func TestSecrets(t *testing.T) {
	a, b := mustSecret(t), mustSecret(t)
	if a == b {
		t.Fatal("two NewSecret calls returned the same secret")
	}
	for _, s := range []string{a, b, vectorSecret} {
		if err := ParseSecret(s); err != nil {
			t.Errorf("ParseSecret(%q): %v", s, err)
		}
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a, "whsec_"))
	if err != nil || len(key) != 32 || !strings.HasPrefix(a, "whsec_") {
		t.Errorf("NewSecret = %q: want whsec_ and 32 bytes of base64 (decoded %d bytes, %v)", a, len(key), err)
	}
	unpadded := "whsec_" + base64.RawStdEncoding.EncodeToString(key)
	if err := ParseSecret(unpadded); err != nil {
		t.Errorf("unpadded base64: %v", err)
	}
	bad := map[string]string{
		"":                                 "must start with",
		"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw": "must start with",
		"whsec_":                           "nothing after",
		"whsec_!!!!":                       "not valid base64",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 16)): "16 bytes",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65)): "65 bytes",
	}
	for s, says := range bad {
		err := ParseSecret(s)
		if err == nil || !errors.Is(err, ErrInvalidSecret) || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseSecret(%q) = %v, want an ErrInvalidSecret saying %q", s, err, says)
		}
		if err != nil && len(s) > 10 && strings.Contains(err.Error(), s) {
			t.Errorf("error %q repeats the secret", err)
		}
	}
	if _, err := Sign([]string{a, "whsec_x"}, "msg", time.Now(), nil); err == nil || !strings.Contains(err.Error(), "secret 2 of 2") {
		t.Errorf("Sign with a bad second secret: %v", err)
	}
	if _, err := Sign([]string{a}, "", time.Now(), nil); err == nil {
		t.Error("Sign accepted an empty id")
	}
}
