package storage

import (
	"errors"
	"strings"
	"testing"
)

func TestSafeContentType(t *testing.T) {
	for in, want := range map[string]string{
		// Active: never kept.
		"text/html; charset=utf-8":              "text/plain; charset=utf-8",
		"TEXT/HTML":                             "text/plain",
		"application/xhtml+xml":                 "text/plain",
		"image/svg+xml":                         "text/plain",
		"text/xml; charset=utf-8":               "text/plain; charset=utf-8",
		"application/xml":                       "text/plain",
		"application/rss+xml":                   "text/plain",
		"application/xml-dtd":                   "text/plain",
		"application/mathml+xml":                "text/plain",
		"application/xslt+xml":                  "text/plain",
		"text/xsl":                              "text/plain",
		"text/javascript; charset=utf-8":        "text/plain; charset=utf-8",
		"application/javascript":                "text/plain",
		"application/x-javascript":              "text/plain",
		"application/ecmascript":                "text/plain",
		"text/jscript":                          "text/plain",
		"multipart/x-mixed-replace; boundary=x": "application/octet-stream",
		"message/rfc822":                        "application/octet-stream",
		"application/x-shockwave-flash":         "application/octet-stream",
		"text/x-component":                      "text/plain",
		// Unparseable or empty.
		"":              "application/octet-stream",
		"text/html; ;;": "application/octet-stream",
		"nonsense":      "application/octet-stream",
		// Honest: kept, with only the charset parameter.
		"image/png":                      "image/png",
		"text/csv; charset=utf-8":        "text/csv; charset=utf-8",
		"application/json":               "application/json",
		"application/pdf":                "application/pdf",
		"text/plain; charset=utf-8; x=1": "text/plain; charset=utf-8",
		"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
		"application/octet-stream": "application/octet-stream",
	} {
		if got := SafeContentType(in); got != want {
			t.Errorf("SafeContentType(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestContentDisposition(t *testing.T) {
	for in, want := range map[string]string{
		"x.html":          `attachment; filename="x.html"`,
		"résumé ü.html":   `attachment; filename="r_sum_ _.html"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC.html`,
		`a"b\c.txt`:       `attachment; filename="a_b_c.txt"; filename*=UTF-8''a%22b%5Cc.txt`,
		"x\r\nSet-Cookie": `attachment; filename="x__Set-Cookie"; filename*=UTF-8''x%0D%0ASet-Cookie`,
		"50%.csv":         `attachment; filename="50_.csv"; filename*=UTF-8''50%25.csv`,
		"bad\xff":         `attachment; filename="bad_"; filename*=UTF-8''bad%EF%BF%BD`,
		"":                `attachment; filename="download"`,
	} {
		got := ContentDisposition(in)
		if got != want {
			t.Errorf("ContentDisposition(%q) = %q\nwant %q", in, got, want)
		}
		if strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r >= 0x7f }) {
			t.Errorf("ContentDisposition(%q) is not a plain ASCII header value: %q", in, got)
		}
	}
}

func TestCheckKey(t *testing.T) {
	if err := checkKey("jobs/x/" + strings.Repeat("a", MaxKeyBytes-7)); err != nil {
		t.Errorf("a key of exactly %d bytes: %v", MaxKeyBytes, err)
	}
	err := checkKey("jobs/x/" + strings.Repeat("a", MaxKeyBytes-6))
	if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "1025 bytes") {
		t.Errorf("a key of %d bytes: %v", MaxKeyBytes+1, err)
	}
}
