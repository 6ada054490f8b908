// Package webhook signs, verifies and delivers sandq's completion webhooks.
//
// Signatures follow the Standard Webhooks specification
// (https://www.standardwebhooks.com): the signed content is
// "<webhook-id>.<webhook-timestamp>.<body>", the signature is
// base64(HMAC-SHA256(key, content)) and is sent as "v1,<signature>" in the
// webhook-signature header. The HMAC itself is computed by the spec's Go
// library (github.com/standard-webhooks/standard-webhooks/libraries/go);
// this package adds what the library does not do: several secrets
// (rotation), an injectable clock for Verify, errors a person can act on,
// secret generation and validation, an SSRF guard, one delivery attempt and
// the retry schedule.
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Header names of the Standard Webhooks specification.
const (
	HeaderID        = standardwebhooks.HeaderWebhookID        // "webhook-id"
	HeaderTimestamp = standardwebhooks.HeaderWebhookTimestamp // "webhook-timestamp"
	HeaderSignature = standardwebhooks.HeaderWebhookSignature // "webhook-signature"
)

// SecretPrefix starts every secret; the rest is the key in base64.
const SecretPrefix = "whsec_"

// Key sizes the specification allows for a symmetric secret, and the size
// NewSecret generates.
const (
	MinSecretBytes = 24
	MaxSecretBytes = 64
	NewSecretBytes = 32
)

// Tolerance is how far a webhook-timestamp may be from the verifier's clock,
// in the past or in the future.
const Tolerance = 5 * time.Minute

// Errors Verify wraps, so callers can tell the checks apart with errors.Is.
// They are the spec library's own sentinel errors.
var (
	ErrMissingHeader       = standardwebhooks.ErrRequiredHeaders
	ErrInvalidTimestamp    = standardwebhooks.ErrInvalidHeaders
	ErrTimestampTooOld     = standardwebhooks.ErrMessageTooOld
	ErrTimestampTooNew     = standardwebhooks.ErrMessageTooNew
	ErrNoMatchingSignature = standardwebhooks.ErrNoMatchingSignature
)

// ErrInvalidSecret is wrapped by every secret format error.
var ErrInvalidSecret = errors.New("invalid webhook secret")

// checkError is a full sentence for people, unwrapping to a sentinel for code.
type checkError struct {
	msg string
	err error
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.err }

func checkErrorf(sentinel error, format string, args ...any) error {
	return &checkError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

// NewSecret returns a fresh secret: "whsec_" and 32 random bytes in base64.
func NewSecret() (string, error) {
	key := make([]byte, NewSecretBytes)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("generate a webhook secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// ParseSecret checks that s is "whsec_" followed by base64 (padded or not) of
// a key of 24 to 64 bytes, as the specification asks. Its errors never
// contain the secret.
func ParseSecret(s string) error {
	_, err := secretKey(s)
	return err
}

// SameKey reports whether a and b are valid secrets holding the same key
// (base64 with or without padding): one key configured twice.
func SameKey(a, b string) bool {
	ka, errA := secretKey(a)
	kb, errB := secretKey(b)
	return errA == nil && errB == nil && hmac.Equal(ka, kb)
}

func secretKey(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, checkErrorf(ErrInvalidSecret, "webhook secret must start with %q", SecretPrefix)
	}
	if rest == "" {
		return nil, checkErrorf(ErrInvalidSecret, "webhook secret has nothing after %q", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(rest)
	}
	if err != nil {
		return nil, checkErrorf(ErrInvalidSecret, "webhook secret is not valid base64 after %q", SecretPrefix)
	}
	if len(key) < MinSecretBytes || len(key) > MaxSecretBytes {
		return nil, checkErrorf(ErrInvalidSecret, "webhook secret decodes to %d bytes; it must be %d to %d bytes", len(key), MinSecretBytes, MaxSecretBytes)
	}
	return key, nil
}

// signers builds one spec-library signer per secret.
func signers(secrets []string) ([]*standardwebhooks.Webhook, error) {
	if len(secrets) == 0 {
		return nil, checkErrorf(ErrInvalidSecret, "no webhook secret is configured")
	}
	out := make([]*standardwebhooks.Webhook, 0, len(secrets))
	for i, s := range secrets {
		key, err := secretKey(s)
		if err != nil {
			if len(secrets) == 1 {
				return nil, err
			}
			return nil, fmt.Errorf("secret %d of %d: %w", i+1, len(secrets), err)
		}
		wh, err := standardwebhooks.NewWebhookRaw(key)
		if err != nil {
			return nil, err
		}
		out = append(out, wh)
	}
	return out, nil
}

// Sign returns the webhook-signature header value for body: one "v1,<sig>"
// per secret, separated by spaces (several secrets while one is rotated out).
// The timestamp is signed at whole seconds, as it is sent.
func Sign(secrets []string, id string, ts time.Time, body []byte) (string, error) {
	if id == "" {
		return "", errors.New("webhook id is empty")
	}
	whs, err := signers(secrets)
	if err != nil {
		return "", err
	}
	sigs := make([]string, len(whs))
	for i, wh := range whs {
		if sigs[i], err = wh.Sign(id, ts, body); err != nil {
			return "", fmt.Errorf("sign webhook %s: %w", id, err)
		}
	}
	return strings.Join(sigs, " "), nil
}

// Headers returns the headers of a signed delivery: webhook-id,
// webhook-timestamp (Unix seconds), webhook-signature and
// Content-Type: application/json.
func Headers(secrets []string, id string, ts time.Time, body []byte) (http.Header, error) {
	sig, err := Sign(secrets, id, ts, body)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	h.Set("Content-Type", "application/json")
	return h, nil
}

// Verify checks a received webhook against the receiver's secrets at time
// now. It fails when a header is missing, the timestamp is not Unix seconds,
// the timestamp is more than Tolerance before or after now, or no v1
// signature in the header matches the body under any of the secrets. Its
// errors are sentences naming the failed check, and wrap ErrMissingHeader,
// ErrInvalidTimestamp, ErrTimestampTooOld, ErrTimestampTooNew,
// ErrNoMatchingSignature or ErrInvalidSecret.
func Verify(secrets []string, h http.Header, body []byte, now time.Time) error {
	id := h.Get(HeaderID)
	tsText := h.Get(HeaderTimestamp)
	sigHeader := strings.Join(h.Values(HeaderSignature), " ")
	for _, m := range []struct{ name, val string }{{HeaderID, id}, {HeaderTimestamp, tsText}, {HeaderSignature, sigHeader}} {
		if strings.TrimSpace(m.val) == "" {
			return checkErrorf(ErrMissingHeader, "the %s header is missing or empty", m.name)
		}
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(tsText), 10, 64)
	if err != nil {
		return checkErrorf(ErrInvalidTimestamp, "the %s header %q is not a Unix time in seconds", HeaderTimestamp, tsText)
	}
	ts := time.Unix(sec, 0)
	if age := now.Sub(ts); age > Tolerance {
		return checkErrorf(ErrTimestampTooOld, "the %s %d (%s) is %s older than now, more than the %s tolerance: a replayed or late message, or the clocks disagree",
			HeaderTimestamp, sec, ts.UTC().Format(time.RFC3339), age.Truncate(time.Second), Tolerance)
	}
	if ahead := ts.Sub(now); ahead > Tolerance {
		return checkErrorf(ErrTimestampTooNew, "the %s %d (%s) is %s in the future, more than the %s tolerance: the clocks disagree",
			HeaderTimestamp, sec, ts.UTC().Format(time.RFC3339), ahead.Truncate(time.Second), Tolerance)
	}
	whs, err := signers(secrets)
	if err != nil {
		return err
	}
	var given [][]byte
	for _, f := range strings.Fields(sigHeader) {
		version, sig, ok := strings.Cut(f, ",")
		if ok && version == "v1" && sig != "" {
			given = append(given, []byte(sig))
		}
	}
	if len(given) == 0 {
		return checkErrorf(ErrNoMatchingSignature, "the %s header holds no v1 signature (expected \"v1,<base64>\", space-separated)", HeaderSignature)
	}
	for _, wh := range whs {
		want, err := wh.Sign(id, ts, body)
		if err != nil {
			return err
		}
		want = strings.TrimPrefix(want, "v1,")
		for _, g := range given {
			if hmac.Equal(g, []byte(want)) {
				return nil
			}
		}
	}
	return checkErrorf(ErrNoMatchingSignature, "no signature in the %s header matches the body with %s: the secret is wrong or the body was changed",
		HeaderSignature, plural(len(whs), "the configured secret", "any of the %d configured secrets"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return fmt.Sprintf(many, n)
}
