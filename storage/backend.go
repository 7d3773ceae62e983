package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"
)

// ObjectInfo describes one stored object as the backend sees it.
type ObjectInfo struct {
	// Key is the object's full key, relative to the backend's root.
	Key string
	// Size is the stored size in bytes (after compression and framing).
	Size int64
	// ModTime is when the backend last wrote the object.
	ModTime time.Time
}

// Backend stores byte streams under keys. Keys are slash-separated relative
// paths made of the characters [A-Za-z0-9._-/]; no segment is empty, "." or
// "..", and no segment starts with "." (those names are reserved for the
// backends' temporary files).
//
// The contract every implementation keeps, and that storagetest checks:
//
//   - Put reads r to EOF and stores the bytes under key. The object becomes
//     visible all at once when Put returns nil, and is durable then. If r
//     returns an error, ctx is cancelled, or anything else fails, Put returns
//     an error and no new object is visible; an object that existed before
//     under key is left as it was. Put on an existing key replaces it
//     atomically: readers see the old content or the new, never a mixture.
//     Memory used by Put is bounded, independent of the object's size.
//   - Get returns a reader of length bytes starting at offset off; a
//     negative length means up to the end. The caller closes the reader.
//     A missing key gives an error matching ErrNotFound.
//   - Stat returns the object's info, or an error matching ErrNotFound.
//   - List calls fn exactly once for each object whose key starts with
//     prefix, in lexical key order. If fn returns an error, List stops and
//     returns it. Temporary files of unfinished Puts are never listed.
//   - ListFrom is List restricted to the keys that sort after after
//     (strictly); with after "" it is List. It costs what it returns, not
//     what sorts before after: S3 starts the listing there (StartAfter),
//     the local directory reads names only and stats only what it returns.
//   - Delete removes the object. Deleting a missing key is not an error.
//   - DeleteMany removes every key of keys (missing ones are no error); on
//     S3 in batches of up to 1000 keys a request. On an error some keys may
//     be deleted and others not; calling it again finishes the work.
//
// Conditional writes, for small objects that coordinate runs (the locks, a
// backup's started.json). Each stored state of an object has a Version;
// the conditional operations on one key are atomic with respect to each
// other (not with respect to an unconditional Put or Delete of that key,
// which callers must not mix in):
//
//   - PutIfAbsent stores data under key only if no object is there. Of any
//     number of concurrent PutIfAbsent calls on one key, at most one
//     succeeds; the others, and any call while the object exists, return an
//     error matching ErrPrecondition and change nothing. It returns the
//     version it stored.
//   - PutIfMatch replaces the object only if its current version is v; a
//     missing object or another version gives ErrPrecondition.
//   - DeleteIfMatch removes the object only if its current version is v
//     (another version: ErrPrecondition; a missing key is not an error).
//   - GetVersioned reads a whole small object (at most 1 MiB) and the
//     version of exactly those bytes.
//
// A backend whose server refuses conditional requests returns an error
// matching ErrConditionalUnsupported. One that silently ignores them (an S3
// server that overwrites despite If-None-Match) cannot say so itself;
// Repository.Lock probes for that before relying on them.
//
// Every method honours ctx: cancellation or a deadline ends the call.
type Backend interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	ListFrom(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error
	Delete(ctx context.Context, key string) error
	DeleteMany(ctx context.Context, keys []string) error
	PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error)
	PutIfMatch(ctx context.Context, key string, data []byte, v Version) (Version, error)
	DeleteIfMatch(ctx context.Context, key string, v Version) error
	GetVersioned(ctx context.Context, key string) ([]byte, Version, error)
	// String names the backend for log lines, e.g. "s3://bucket/prefix".
	String() string
}

// Version identifies one stored state of an object for conditional writes:
// the S3 ETag, or a SHA-256 of the content for the local and memory
// backends. It is opaque; compare versions only for equality.
type Version string

// maxVersioned is the largest object GetVersioned reads.
const maxVersioned = 1 << 20

// Errors a caller can classify with errors.Is.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrCorrupt: the object's content does not match its recorded checksum,
	// or its framing is damaged.
	ErrCorrupt = errors.New("object is corrupt")
	// ErrExists: a write-once object already exists with other content.
	ErrExists = errors.New("object already exists")
	// ErrPrecondition: a conditional write found the object in another
	// state than it required (present, missing, or another version).
	ErrPrecondition = errors.New("precondition failed")
	// ErrConditionalUnsupported: the storage server refuses conditional
	// writes.
	ErrConditionalUnsupported = errors.New("the storage server does not support conditional writes")
)

// permanentError marks an error that retrying cannot fix: no space left, no
// permission, bad credentials, a missing bucket.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying will not fix. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	var p *permanentError
	if errors.As(err, &p) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or anything it wraps) was marked
// permanent, or is a not-found or corruption error, which retrying cannot fix
// either.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) ||
		errors.Is(err, ErrExists) || errors.Is(err, ErrPrecondition) || errors.Is(err, ErrConditionalUnsupported)
}

// MarkedPermanent reports whether err (or anything it wraps) was marked
// with Permanent by a backend or a layer. Unlike IsPermanent it does not
// count ErrNotFound, ErrCorrupt and ErrExists by themselves: what those
// mean depends on what the caller did. For a writer that found an object a
// moment ago, a not-found is a race with another writer (wal-push,
// retention, a stream shutting down), and looking again is the answer.
func MarkedPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// Unwritable says why a filesystem refuses writes in a way that only the
// operator can fix, without walkeeper's help: "full" (ENOSPC), "over its
// disk quota" (EDQUOT) or "read-only" (EROFS); "" for any other error.
// The local backend marks these permanent, since a command run once
// cannot wait for the fix; a daemon such as the stream waits them out,
// retrying with backoff until space returns.
func Unwritable(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ENOSPC):
		return "full"
	case errors.Is(err, syscall.EDQUOT):
		return "over its disk quota"
	case errors.Is(err, syscall.EROFS):
		return "read-only"
	}
	return ""
}

// IsRetryable reports whether trying the same operation again may succeed:
// any error that is not permanent and not a cancellation by the caller.
func IsRetryable(err error) bool {
	if err == nil || IsPermanent(err) {
		return false
	}
	return !errors.Is(err, context.Canceled)
}

// ValidateKey checks key against the rules in the Backend contract.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("invalid object key %q: empty", key)
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i < len(key) {
			c := key[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				c == '.' || c == '_' || c == '-' || c == '/'
			if !ok {
				return fmt.Errorf("invalid object key %q: character %q not allowed", key, c)
			}
			if c != '/' {
				continue
			}
		}
		seg := key[start:i]
		if seg == "" || seg[0] == '.' {
			return fmt.Errorf("invalid object key %q: empty or dot-prefixed path segment", key)
		}
		start = i + 1
	}
	return nil
}
