// Package storage is walkeeper's repository: where WAL segments, timeline
// history files and base backups are kept.
//
// # Layers
//
// The package is built in three layers, each small enough to test on its own:
//
//  1. A Backend stores opaque byte streams under string keys. There are three:
//     a local directory (NewLocal), an S3 bucket (NewS3) and an in-memory map
//     for unit tests (NewMemory). Backends know nothing about compression or
//     PostgreSQL. Every backend passes the same conformance suite
//     (storage/storagetest).
//  2. The object format (object.go) wraps every stored object in a small
//     envelope: a 16-byte header naming the compression codec, the compressed
//     body, and a 48-byte trailer holding the uncompressed size and a SHA-256
//     of the stored bytes. Readers therefore never guess the codec, and every
//     full read checks the checksum, the codec's own content checksum and the
//     size, so a flipped byte is reported as ErrCorrupt instead of being
//     handed to PostgreSQL.
//  3. A Repository (repository.go) names the objects (the layout is defined in
//     layout.go and nowhere else), owns walkeeper.json, and refuses to write
//     into a repository that belongs to another cluster or uses a newer format.
//
// # Conditional writes and locks
//
// Backends also create, replace and delete small objects conditionally
// (PutIfAbsent, PutIfMatch, DeleteIfMatch against a Version: the S3 ETag
// with If-None-Match / If-Match, a hard link and a flock locally, a mutex
// in memory). Repository.Lock (lock.go) builds the repository locks on
// them, so two runs can never both hold one; it probes an S3 server once
// for whether it honours the headers and falls back to write-then-verify,
// with a warning, when it does not. A holder that finds its lock replaced
// or removed is cancelled with ErrLockLost.
//
// Open (open.go) is the one function that assembles these layers from a
// --repo URL and options.
//
// # Why SHA-256, and over the stored bytes
//
// SHA-256 is in the standard library, hardware-accelerated on current x86-64
// and arm64 CPUs, and collision resistant, which a CRC is not: it can serve
// as an object's identity in backup.json and verify reports. It is computed
// over the stored bytes (header and compressed body), not the content: WAL
// compresses about 10:1, so this costs a tenth of hashing the content (at
// 1.6 GB/s, hashing every WAL byte took a fifth of the stream's CPU), and it
// catches every flipped bit, including in parts of a frame a decoder
// ignores. The decompressed content is covered by the codec's own checksum
// where it has one (zstd's content checksum, gzip's CRC-32, s2's CRC-32C per
// chunk; lz4 frames carry none, and for none the stored bytes are the
// content) and by the size in the trailer.
//
// lz4 objects are written by our own LZ4 frame encoder (lz4.go, standard
// frames of independent 256 KiB blocks); pierrec/lz4 reads them. Writer
// hands the codec at most 256 KiB at a time, so hashing, compressing and
// the kernel's copy of a piece all find it in the CPU cache. On the local
// backend the stored bytes go straight into the temporary file (Local's
// create/commit), with no pipe or goroutine between; other backends get
// them through an io.Pipe into Put.
// Comparing content across codecs (wal-push, a re-received segment) uses
// Repository.CompareContent, which decompresses and compares.
//
// # Durability
//
// Backends make a Put visible only when it is complete: the local backend
// writes a temporary file, checks the byte count, fsyncs it, renames it into
// place and fsyncs the directory; S3 shows an object only when PutObject or
// CompleteMultipartUpload succeeds and aborts the multipart upload on any
// failure or cancellation. When Put returns nil the object is durable.
package storage
