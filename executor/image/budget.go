package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/sandq/sandq/internal/bytesize"
)

// Import caps: defaults and the most an operator may raise them to.
const (
	// DefaultMaxImportBytes caps, by default, the bytes an import
	// unpacks: the archive's decompressed stream, and, separately, the
	// layers' uncompressed streams together.
	DefaultMaxImportBytes int64 = 16 << 30
	// MaxImportBytesLimit is the largest size cap an import accepts.
	MaxImportBytesLimit int64 = 1 << 40
	// DefaultMaxImportEntries caps, by default, the tar entries an import
	// reads: the archive's and all the layers' together.
	DefaultMaxImportEntries int64 = 1_000_000
	// MaxImportEntriesLimit is the largest entry cap an import accepts.
	MaxImportEntriesLimit int64 = 100_000_000
	// maxMetaBytes caps each JSON document of an image (index, manifest,
	// config), which are read whole into memory.
	maxMetaBytes = 16 << 20
)

// budget counts what an import unpacks against its caps. Every byte read
// out of a decompressor or a layer's tar stream is counted as it is read,
// whatever becomes of it: written, skipped, a whiteout's body, tar
// headers and padding. The archive's own decompressed stream (a gzipped
// tar) and the layers' streams are counted separately, each against
// maxBytes, so that a gzipped archive of an image may be as large as the
// image. Entries are counted over the archive and the layers together.
type budget struct {
	ctx                  context.Context
	maxBytes, maxEntries int64
	// archive counts the decompressed bytes of the archive itself, image
	// the bytes of the layers' streams plus what sparse files expand to.
	archive, image int64
	entries        int64
}

func newBudget(ctx context.Context, maxBytes, maxEntries int64) *budget {
	return &budget{ctx: ctx, maxBytes: maxBytes, maxEntries: maxEntries}
}

// errBytes is the error of the size cap; what says what went over it.
func (b *budget) errBytes(what string) error {
	return fmt.Errorf("%w: %s unpacks to more than %d bytes (%s), the import's size cap; raise it with --max-size (MaxBytes), at most %s",
		ErrTooLarge, what, b.maxBytes, bytesize.Format(b.maxBytes), bytesize.Format(MaxImportBytesLimit))
}

// entry counts one tar entry.
func (b *budget) entry() error {
	b.entries++
	if b.entries > b.maxEntries {
		return fmt.Errorf("%w: more than %d entries, the import's entry cap; raise it with --max-entries (MaxEntries), at most %d",
			ErrTooLarge, b.maxEntries, MaxImportEntriesLimit)
	}
	return nil
}

// fits refuses an entry of n bytes (a regular file about to be written)
// that would take the image over the cap, before any of it is read.
func (b *budget) fits(n int64) error {
	if n < 0 || b.image+n > b.maxBytes {
		return b.errBytes("the image")
	}
	return nil
}

// charge counts n bytes that are written without being read from a
// counted stream: the holes of a sparse file, expanded.
func (b *budget) charge(n int64) error {
	if err := b.fits(n); err != nil {
		return err
	}
	b.image += n
	return nil
}

// archiveReader counts the archive's decompressed stream r.
func (b *budget) archiveReader(r io.Reader) io.Reader {
	return &countingReader{b: b, r: r, n: &b.archive, what: "the archive"}
}

// layerReader counts a layer's uncompressed stream r.
func (b *budget) layerReader(r io.Reader) io.Reader {
	return &countingReader{b: b, r: r, n: &b.image, what: "the image"}
}

// countingReader fails, with the size cap's error, the read that takes
// its count over the cap; it never returns more than the cap allows, so
// no more than the cap (and the decompressor's buffer) is decompressed.
// It also stops when the import's context is done.
type countingReader struct {
	b    *budget
	r    io.Reader
	n    *int64
	what string
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.b.ctx.Err(); err != nil {
		return 0, err
	}
	left := c.b.maxBytes - *c.n
	if left <= 0 {
		// Over the cap only if there is more to read.
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n == 0 {
			return 0, io.EOF
		}
		return 0, c.b.errBytes(c.what)
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// isSparse reports a sparse tar entry, whose holes the tar reader expands
// to zeros that are not in the stream.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
