package storage

import (
	"context"
	"fmt"

	"github.com/minio/minio-go/v7"
)

// Copy copies the object at src to dst inside the store (S3 CopyObject, or
// UploadPartCopy parts for an object over 5 GiB: plain S3 either way), so
// no byte passes through this process. The source must be size bytes: an
// object of another size is refused (ErrSizeMismatch) before anything is
// written. dst is stored as a download under po, like Put; its metadata is
// replaced, not copied from src. The copy's sha256 is not computed here:
// Object.SHA256 is empty, and the caller carries the source's over.
func (s *Store) Copy(ctx context.Context, src, dst string, size int64, po PutOptions) (Object, error) {
	if err := checkKey(dst); err != nil {
		return Object{}, fmt.Errorf("copy to: %w", err)
	}
	st, err := s.client.StatObject(ctx, s.bucket, src, minio.StatObjectOptions{})
	if err != nil {
		return Object{}, fmt.Errorf("copy %s: %w", src, convert(err))
	}
	if st.Size != size {
		return Object{}, fmt.Errorf("copy %s: %w: it is %d bytes, expected %d", src, ErrSizeMismatch, st.Size, size)
	}
	contentType := SafeContentType(po.ContentType)
	dstOpts := minio.CopyDestOptions{
		Bucket: s.bucket, Object: dst, ReplaceMetadata: true,
		ContentType: contentType, ContentDisposition: ContentDisposition(filenameOf(po.Filename, dst)),
	}
	srcOpts := minio.CopySrcOptions{
		Bucket: s.bucket, Object: src,
		// The object that was measured is the one copied: a source
		// written anew in between fails the copy (PreconditionFailed).
		MatchETag: st.ETag,
	}
	if size <= maxCopyObject {
		_, err = s.client.CopyObject(ctx, dstOpts, srcOpts)
	} else {
		// ComposeObject copies a single source in parts (UploadPartCopy)
		// of at most 5 GiB each.
		_, err = s.client.ComposeObject(ctx, dstOpts, srcOpts)
	}
	if err != nil {
		return Object{}, fmt.Errorf("copy %s to %s: %w", src, dst, convert(err))
	}
	return Object{Key: dst, Size: st.Size, ContentType: contentType}, nil
}

// maxCopyObject is the largest object one S3 CopyObject copies.
const maxCopyObject = 5 << 30

// ErrSizeMismatch is returned by Copy when the source is not the size the
// caller expects of it.
var ErrSizeMismatch = fmt.Errorf("object is not the size expected")
