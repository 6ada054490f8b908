package storage

import (
	"errors"
	"fmt"
	"mime"
	"path"
	"strings"
	"unicode/utf8"
)

// MaxKeyBytes is the longest object key S3 accepts.
const MaxKeyBytes = 1024

// ErrInvalidKey is returned when the store does not accept an object's key:
// longer than MaxKeyBytes, or a name the store refuses (MinIO refuses a path
// segment over 255 bytes).
var ErrInvalidKey = errors.New("object key not accepted by the store")

// PutOptions say how an object is stored and how the store serves it.
//
// Every object is stored as a download: with Content-Disposition
// attachment, named Filename (default: the key's last segment), and a
// Content-Type a browser never runs (see SafeContentType), so that nothing
// a job writes can run script on the store's origin.
type PutOptions struct {
	// ContentType is stored with the object after SafeContentType.
	// Default application/octet-stream.
	ContentType string
	// Filename is the name a browser saves the object under. Default: the
	// key's last segment.
	Filename string
}

// LinkOptions say how a presigned link's response is served. A link always
// overrides Content-Disposition to attachment (response-content-disposition),
// whatever was stored, so a link is a download on every S3 store.
type LinkOptions struct {
	// Filename is the name a browser saves the download under. Default: the
	// key's last segment.
	Filename string
	// ContentType, when set, overrides the stored Content-Type
	// (response-content-type), after SafeContentType.
	ContentType string
}

// SafeContentType returns ct unless a browser would run it as a document or
// script on the store's origin: HTML, XHTML, SVG and any other XML,
// JavaScript and ECMAScript, XSL, and types that wrap documents (multipart,
// message) or plug-ins. Text ones become text/plain (keeping the charset),
// the others application/octet-stream, as does a type that does not parse.
// Honest types (image/png, text/csv, application/json, application/pdf...)
// are kept.
func SafeContentType(ct string) string {
	if strings.TrimSpace(ct) == "" {
		return "application/octet-stream"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "application/octet-stream"
	}
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || typ == "" || sub == "" {
		return "application/octet-stream"
	}
	switch {
	case typ == "multipart" || typ == "message" || plugins[mt]:
		return "application/octet-stream"
	case mt == "text/html" || mt == "text/xsl" || sub == "xml" || strings.HasSuffix(sub, "+xml") || strings.HasPrefix(sub, "xml-") ||
		strings.Contains(sub, "javascript") || strings.Contains(sub, "ecmascript") || strings.Contains(sub, "jscript") ||
		sub == "livescript" || mt == "text/x-component" || mt == "application/hta":
		if cs := params["charset"]; cs != "" {
			return mime.FormatMediaType("text/plain", map[string]string{"charset": cs})
		}
		return "text/plain"
	}
	// Only the charset parameter is kept.
	keep := map[string]string{}
	if cs := params["charset"]; cs != "" {
		keep["charset"] = cs
	}
	if s := mime.FormatMediaType(mt, keep); s != "" {
		return s
	}
	return "application/octet-stream"
}

// plugins are types a browser hands to a plug-in that runs with the
// origin's rights.
var plugins = map[string]bool{
	"application/x-shockwave-flash": true,
	"application/futuresplash":      true,
	"application/x-silverlight-app": true,
	"application/x-java-applet":     true,
	"text/cache-manifest":           true,
}

// ContentDisposition is an RFC 6266 attachment disposition for filename: a
// quoted ASCII fallback (other bytes, quotes, backslashes, controls and
// path separators as "_"), and the exact UTF-8 name as an RFC 5987
// filename* when the two differ.
func ContentDisposition(filename string) string {
	if filename == "" {
		filename = "download"
	}
	var fb strings.Builder
	for _, r := range filename {
		if r < 0x20 || r >= 0x7f || r == '"' || r == '\\' || r == '/' || r == '%' {
			fb.WriteByte('_')
			continue
		}
		fb.WriteRune(r)
	}
	v := `attachment; filename="` + fb.String() + `"`
	if fb.String() == filename {
		return v
	}
	return v + "; filename*=UTF-8''" + rfc5987(filename)
}

// rfc5987 percent-encodes s but for RFC 5987's attr-char; invalid UTF-8 is
// replaced first.
func rfc5987(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// checkKey refuses a key the store would not accept, before any request.
func checkKey(key string) error {
	if len(key) > MaxKeyBytes {
		return fmt.Errorf("object key of %d bytes is over the store's %d-byte limit: %w", len(key), MaxKeyBytes, ErrInvalidKey)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("object key is not valid UTF-8: %w", ErrInvalidKey)
	}
	return nil
}

// filenameOf is name, or the key's last segment.
func filenameOf(name, key string) string {
	if name != "" {
		return name
	}
	return path.Base(key)
}
