package jobs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sandq/sandq/executor"
)

// Errors of Download, for errors.Is.
var (
	// ErrLinksExpired: the result's presigned links are past their expiry.
	// They are signed once, by the worker when the job ends, for the
	// worker's link expiry; reading the result again gives the same links.
	ErrLinksExpired = errors.New("the result's download links have expired")
	// ErrChecksumMismatch: a file's bytes are not those the result
	// describes (its sha256 or its length differs).
	ErrChecksumMismatch = errors.New("does not match the result")
	// ErrUnsafePath: a name in the result would be written outside the
	// directory, or through a symbolic link already in it.
	ErrUnsafePath = errors.New("unsafe path")
)

// Names under which Download writes a job's logs, beside its outputs.
const (
	StdoutLogName = "stdout.log"
	StderrLogName = "stderr.log"
)

// Download's limits on the store's answers.
const (
	// DownloadIdleTimeout is how long a download may go without a byte
	// before it is abandoned.
	DownloadIdleTimeout = 60 * time.Second
	// tempPrefix starts the name of a file being downloaded.
	tempPrefix = ".sandq-download-"
)

// The limits above and below as Download applies them: tests lower them.
var (
	downloadIdle = DownloadIdleTimeout
	// maxManifestBytes caps the manifest.json of a trimmed result read into
	// memory (a manifest of 10,000 long-named outputs is about 10 MB).
	maxManifestBytes int64 = 256 << 20
)

// DownloadOptions says what Download fetches.
type DownloadOptions struct {
	// Include, when not empty, keeps the outputs whose path matches one of
	// the globs (path.Match syntax). A glob without "/" also matches an
	// output's base name, so "*.png" finds charts/a.png.
	Include []string
	// Logs also fetches stdout and stderr, as StdoutLogName and
	// StderrLogName.
	Logs bool
	// Written, when set, is called for each file as soon as it is in place.
	Written func(Downloaded)
}

// Downloaded is one file Download wrote.
type Downloaded struct {
	// Path is the output's path (or the log's name), relative to the
	// directory, "/"-separated.
	Path string `json:"path"`
	// File is where it was written: the directory joined with Path.
	File string `json:"file"`
	Size int64  `json:"size"`
	// SHA256 is the checked digest of an output; empty for a log, whose
	// result entry carries none (its length is checked when nothing was
	// dropped from it).
	SHA256 string `json:"sha256,omitempty"`
	// Kind is "output", "stdout" or "stderr".
	Kind string `json:"kind"`
}

// download is one file to fetch: where it goes and what it must be.
type download struct {
	path, url, kind string
	expires         time.Time
	// size is the exact length; -1 when only minSize..maxSize is known (a
	// log with bytes dropped from its middle, and a marker in their place).
	size, minSize, maxSize int64
	sha256                 string
}

// NewDownloadClient is the HTTP client Download uses when given none: it
// gives up on a connection after 10s, on a response's headers after 30s,
// and (through Download) on a body that sends nothing for
// DownloadIdleTimeout. There is no limit on a whole transfer, which may be
// gigabytes.
func NewDownloadClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}}
}

// Download fetches a finished job's outputs (and, with opts.Logs, its logs)
// over the result's presigned links into dir, which it creates if needed.
// It serves direct producers and API clients alike: both hold a result
// with links.
//
// Every name is checked before anything is fetched: a result naming a path
// that is absolute, has "." or ".." components, is not valid UTF-8, has
// control characters, is listed twice, or is both a file and a directory
// is refused (a worker never writes such a result; a tampered one could).
// While writing, a directory component already in dir that is a symbolic
// link is refused, and the writes go through an os.Root, so no name can
// reach outside dir. Each file is written to a temporary file beside its
// place, checked (length and sha256), synced and renamed into place; on
// any failure the temporary file is removed, so a file is either whole and
// checked or absent. An existing file of the same name is replaced (a
// symbolic link by that name is replaced, not followed).
//
// The files already written when an error ends it are returned with the
// error. A result trimmed of outputs is read whole from its manifest.
func Download(ctx context.Context, hc *http.Client, res *Result, dir string, opts DownloadOptions) ([]Downloaded, error) {
	if hc == nil {
		hc = NewDownloadClient()
	}
	outputs := res.Outputs
	if t := res.Trimmed; t != nil && t.Outputs > 0 {
		if t.Manifest == nil {
			return nil, fmt.Errorf("the result of job %s lists %d fewer outputs than the job wrote and links no manifest of them", res.ID, t.Outputs)
		}
		m, err := fetchManifest(ctx, hc, res.ID, t.Manifest)
		if err != nil {
			return nil, err
		}
		outputs = m.Outputs
	}
	list, err := downloadList(res, outputs, opts)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, d := range list {
		if !d.expires.IsZero() && now.After(d.expires) {
			return nil, linksExpired(d.expires)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	var done []Downloaded
	for _, d := range list {
		got, err := fetchFile(ctx, hc, root, d)
		if err != nil {
			return done, err
		}
		got.File = filepath.Join(dir, filepath.FromSlash(d.path))
		done = append(done, got)
		if opts.Written != nil {
			opts.Written(got)
		}
	}
	return done, nil
}

func linksExpired(at time.Time) error {
	return fmt.Errorf("%w (at %s): links are signed once, when the job ends, and reading the result again (sandq status) gives the same ones", ErrLinksExpired, at.UTC().Format(time.RFC3339))
}

// downloadList is what Download fetches, every name checked.
func downloadList(res *Result, outputs []OutputDoc, opts DownloadOptions) ([]download, error) {
	for _, g := range opts.Include {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("include %q: %w", g, err)
		}
	}
	var list []download
	for _, o := range outputs {
		if len(opts.Include) > 0 && !slices.ContainsFunc(opts.Include, func(g string) bool { return globMatch(g, o.Path) }) {
			continue
		}
		if len(o.SHA256) != sha256.Size*2 || strings.ToLower(o.SHA256) != o.SHA256 {
			return nil, fmt.Errorf("output %q: the result gives no valid sha256 (%q)", o.Path, o.SHA256)
		}
		if _, err := hex.DecodeString(o.SHA256); err != nil {
			return nil, fmt.Errorf("output %q: the result gives no valid sha256 (%q)", o.Path, o.SHA256)
		}
		if o.Size < 0 {
			return nil, fmt.Errorf("output %q: the result gives a negative size", o.Path)
		}
		list = append(list, download{path: o.Path, url: o.URL, kind: "output", expires: o.ExpiresAt, size: o.Size, sha256: o.SHA256})
	}
	if len(opts.Include) > 0 && len(list) == 0 {
		return nil, fmt.Errorf("no output of job %s matches --include %s (it has %d outputs)", res.ID, strings.Join(opts.Include, " "), len(outputs))
	}
	if opts.Logs {
		for _, l := range []struct {
			name, kind string
			doc        *LogDoc
		}{{StdoutLogName, "stdout", res.Stdout}, {StderrLogName, "stderr", res.Stderr}} {
			if l.doc == nil || l.doc.URL == "" {
				continue
			}
			d := download{path: l.name, url: l.doc.URL, kind: l.kind, expires: l.doc.ExpiresAt, size: l.doc.Bytes}
			if l.doc.DroppedBytes > 0 {
				// The stored log is its head, a one-line marker saying how
				// much was dropped, and its tail.
				d.size, d.minSize, d.maxSize = -1, l.doc.Bytes-l.doc.DroppedBytes, l.doc.Bytes-l.doc.DroppedBytes+256
			}
			list = append(list, d)
		}
	}
	seen := make(map[string]string, len(list))
	for _, d := range list {
		if err := CheckDownloadPath(d.path); err != nil {
			return nil, err
		}
		if kind, ok := seen[d.path]; ok {
			if kind != "output" || d.kind != "output" {
				return nil, fmt.Errorf("the job's output %q has the name --logs writes the job's %s to: download without --logs, or with --include", d.path, d.kind)
			}
			return nil, fmt.Errorf("%w: %q is listed twice in the result", ErrUnsafePath, d.path)
		}
		seen[d.path] = d.kind
	}
	for _, d := range list {
		for dir := path.Dir(d.path); dir != "."; dir = path.Dir(dir) {
			if _, ok := seen[dir]; ok {
				return nil, fmt.Errorf("%w: %q is a file in the result, and also the directory of %q", ErrUnsafePath, dir, d.path)
			}
		}
	}
	return list, nil
}

// globMatch reports whether p matches the glob g, or, when g has no "/",
// whether p's base name does.
func globMatch(g, p string) bool {
	if ok, _ := path.Match(g, p); ok {
		return true
	}
	if !strings.Contains(g, "/") {
		ok, _ := path.Match(g, path.Base(p))
		return ok
	}
	return false
}

// CheckDownloadPath refuses an output path that could not have come from
// a worker's collection and could be written outside a directory: empty,
// absolute, not in clean form ("a//b", "a/./b", "a/"), with a ".."
// component, not valid UTF-8, with control characters, or longer than
// executor.MaxOutputPathBytes.
func CheckDownloadPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %q %s", ErrUnsafePath, p, why) }
	switch {
	case p == "":
		return bad("is empty")
	case p == ".":
		return bad("names the directory itself")
	case len(p) > executor.MaxOutputPathBytes:
		return bad(fmt.Sprintf("is over %d bytes", executor.MaxOutputPathBytes))
	case !utf8.ValidString(p):
		return bad("is not valid UTF-8")
	case strings.ContainsFunc(p, unicode.IsControl):
		return bad("has control characters")
	case strings.HasPrefix(p, "/"):
		return bad("is absolute")
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return bad("has a .. component")
		}
	}
	if path.Clean(p) != p {
		return bad("is not a clean relative path")
	}
	return nil
}

// fetchFile downloads one file into root by way of a temporary file.
func fetchFile(ctx context.Context, hc *http.Client, root *os.Root, d download) (Downloaded, error) {
	got := Downloaded{Path: d.path, Kind: d.kind}
	if err := makeParents(root, d.path); err != nil {
		return got, err
	}
	if fi, err := root.Lstat(d.path); err == nil && fi.IsDir() {
		return got, fmt.Errorf("%q: a directory of that name is in the way", d.path)
	}
	tmp := path.Join(path.Dir(d.path), tempPrefix+randomName()+".tmp")
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return got, fmt.Errorf("%q: %w", d.path, err)
	}
	placed := false
	defer func() {
		if !placed {
			f.Close()
			root.Remove(tmp)
		}
	}()
	n, sum, err := fetchInto(ctx, hc, d, f)
	if err != nil {
		return got, fmt.Errorf("%q: %w", d.path, err)
	}
	if err := f.Sync(); err != nil {
		return got, fmt.Errorf("%q: %w", d.path, err)
	}
	if err := f.Close(); err != nil {
		return got, fmt.Errorf("%q: %w", d.path, err)
	}
	if err := root.Rename(tmp, d.path); err != nil {
		return got, fmt.Errorf("%q: %w", d.path, err)
	}
	placed = true
	// The rename lasts through a crash once the directory is synced.
	if dir, err := root.Open(path.Dir(d.path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	got.Size = n
	if d.kind == "output" {
		got.SHA256 = sum
	}
	return got, nil
}

// makeParents creates the directories of p under root, refusing one
// already there that is a symbolic link (os.Root would follow it within
// root; a link is not what the result named).
func makeParents(root *os.Root, p string) error {
	parts := strings.Split(p, "/")
	for i := 1; i < len(parts); i++ {
		dir := strings.Join(parts[:i], "/")
		fi, err := root.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%q: %w", p, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: %q: %q is a symbolic link already in the directory", ErrUnsafePath, p, dir)
		case !fi.IsDir():
			return fmt.Errorf("%q: %q is in the way and not a directory", p, dir)
		}
	}
	return nil
}

// fetchInto GETs d's link into w and checks what came. It returns the
// length and sha256 of what it wrote.
func fetchInto(ctx context.Context, hc *http.Client, d download, w io.Writer) (int64, string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(downloadIdle, func() {
		cancel(fmt.Errorf("nothing received for %s", downloadIdle))
	})
	defer idle.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return 0, "", fmt.Errorf("the result's link: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", fetchErr(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == http.StatusForbidden && strings.Contains(string(body), "expired") {
			return 0, "", linksExpired(d.expires)
		}
		return 0, "", fmt.Errorf("the store answered HTTP %d%s", resp.StatusCode, storeMessage(body))
	}
	h := sha256.New()
	limit := d.size
	if limit < 0 {
		limit = d.maxSize
	}
	// One byte past the expected length is enough to tell a longer file.
	n, err := io.Copy(io.MultiWriter(w, h), &idleReader{r: io.LimitReader(resp.Body, limit+1), t: idle})
	if err != nil {
		return n, "", fetchErr(ctx, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	switch {
	case d.size >= 0 && n != d.size:
		return n, "", fmt.Errorf("%w: %d bytes received, the result says %d", ErrChecksumMismatch, n, d.size)
	case d.size < 0 && (n < d.minSize || n > d.maxSize):
		return n, "", fmt.Errorf("%w: %d bytes received, the result says %d to %d", ErrChecksumMismatch, n, d.minSize, d.maxSize)
	case d.sha256 != "" && sum != d.sha256:
		return n, "", fmt.Errorf("%w: sha256 %s received, the result says %s", ErrChecksumMismatch, sum, d.sha256)
	}
	return n, sum, nil
}

// fetchErr says why a transfer ended, the idle timer's cause over the
// bare "context canceled".
func fetchErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%w: %w", cause, err)
	}
	return fmt.Errorf("transfer failed: %w", err)
}

// storeMessage is the code and message of an S3 error body, if it is one.
func storeMessage(body []byte) string {
	field := func(tag string) string {
		_, rest, ok := strings.Cut(string(body), "<"+tag+">")
		v, _, _ := strings.Cut(rest, "</"+tag+">")
		if !ok {
			return ""
		}
		return v
	}
	code := field("Code")
	if code == "" {
		return ""
	}
	return ": " + strings.TrimSpace(code+" "+field("Message"))
}

// idleReader pushes back the idle timer on every read that returns bytes.
type idleReader struct {
	r io.Reader
	t *time.Timer
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.Reset(downloadIdle)
	}
	return n, err
}

// fetchManifest reads a trimmed result's manifest.
func fetchManifest(ctx context.Context, hc *http.Client, id string, ref *ManifestRef) (*Manifest, error) {
	if !ref.ExpiresAt.IsZero() && time.Now().After(ref.ExpiresAt) {
		return nil, linksExpired(ref.ExpiresAt)
	}
	var buf bytes.Buffer
	_, _, err := fetchInto(ctx, hc, download{path: "manifest.json", url: ref.URL, kind: "manifest", expires: ref.ExpiresAt, size: -1, maxSize: maxManifestBytes}, &buf)
	if err != nil {
		return nil, fmt.Errorf("the trimmed result's manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		return nil, fmt.Errorf("the trimmed result's manifest: %w", err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("the trimmed result's manifest is job %q's, not %s's", m.ID, id)
	}
	return &m, nil
}

func randomName() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
