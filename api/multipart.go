package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
)

// recentWindow is how much of a body recentReader keeps: more than the
// multipart reader reads ahead (4 KiB) plus a part's headers as clients
// send them. A part whose headers are longer is refused all the same (400),
// only without naming its field.
const recentWindow = 16 << 10

// recentReader keeps the last bytes read through it, so that a part whose
// headers the multipart reader refuses can still be named: the reader's
// error holds the offending line, not the part's name.
type recentReader struct {
	r    io.Reader
	buf  []byte
	pos  int
	full bool
}

func (rr *recentReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	rr.keep(p[:n])
	return n, err
}

func (rr *recentReader) keep(b []byte) {
	size := len(rr.buf)
	if len(b) >= size {
		copy(rr.buf, b[len(b)-size:])
		rr.pos, rr.full = 0, true
		return
	}
	if n := copy(rr.buf[rr.pos:], b); n < len(b) {
		copy(rr.buf, b[n:])
	}
	rr.pos += len(b)
	if rr.pos >= size {
		rr.pos -= size
		rr.full = true
	}
}

// recent returns the kept bytes in order.
func (rr *recentReader) recent() []byte {
	if !rr.full {
		return bytes.Clone(rr.buf[:rr.pos])
	}
	return append(bytes.Clone(rr.buf[rr.pos:]), rr.buf[:rr.pos]...)
}

// multipartReader is http.Request.MultipartReader over a recentReader.
func multipartReader(r *http.Request) (*multipart.Reader, *recentReader, string, bool) {
	d, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || d != "multipart/form-data" || params["boundary"] == "" {
		return nil, nil, "", false
	}
	rr := &recentReader{r: r.Body, buf: make([]byte, recentWindow)}
	return multipart.NewReader(rr, params["boundary"]), rr, params["boundary"], true
}

var partNameParam = regexp.MustCompile(`(?i)(?:^|[;\s])name\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))`)

// refusedPartName finds the name of the part whose header line (as a
// textproto.ProtocolError quotes it) the multipart reader refused, in the
// bytes last read: the header block holding that line starts after the
// last delimiter before it. It returns "" when the line is not found.
func refusedPartName(recent []byte, boundary string, perr textproto.ProtocolError) string {
	msg := string(perr)
	q := strings.IndexByte(msg, '"')
	if q < 0 {
		return ""
	}
	line, err := strconv.Unquote(msg[q:])
	if err != nil || line == "" {
		return ""
	}
	delim := []byte("--" + boundary)
	for off := 0; off < len(recent); {
		i := bytes.Index(recent[off:], []byte(line))
		if i < 0 {
			return ""
		}
		at := off + i
		off = at + 1
		d := bytes.LastIndex(recent[:at], delim)
		if d < 0 {
			continue
		}
		block := recent[d+len(delim) : at+len(line)]
		if bytes.Contains(block, []byte("\r\n\r\n")) || bytes.Contains(block, []byte("\n\n")) {
			// The line is in a part's content, not in its headers.
			continue
		}
		if m := partNameParam.FindSubmatch(block); m != nil {
			return string(m[1]) + string(m[2])
		}
	}
	return ""
}

// malformedPart refuses a part whose headers are not valid MIME: in
// practice a file name holding a raw control character, which ends or
// breaks its header line. The field is the part's, as for other bad
// names.
func malformedPart(err error, part string) *Error {
	what, field, code := "a part", part, "invalid_request"
	switch part {
	case partScript:
		code = "invalid_spec"
	case partInput:
		field, code = "inputs", "invalid_spec"
	}
	if part != "" {
		what = fmt.Sprintf("the %q part", part)
	}
	var pe textproto.ProtocolError
	detail := err.Error()
	if errors.As(err, &pe) {
		detail = string(pe)
	}
	return apiError(http.StatusBadRequest, code, field,
		fmt.Sprintf("the headers of %s are not valid MIME (%s): a file name may not hold a control character (NUL, CR, LF, ESC and the like)", what, detail))
}
