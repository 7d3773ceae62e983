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
//     body, and a 56-byte trailer holding the uncompressed size, its SHA-256
//     and a CRC-32C of the stored bytes. Readers therefore never guess the
//     codec, and every full read checks both checksums, so a flipped byte is
//     reported as ErrCorrupt instead of being handed to PostgreSQL.
//  3. A Repository (repository.go) names the objects (the layout is defined in
//     layout.go and nowhere else), owns walkeeper.json, and refuses to write
//     into a repository that belongs to another cluster or uses a newer format.
//
// Open (open.go) is the one function that assembles these layers from a
// --repo URL and options.
//
// # Why SHA-256
//
// The checksum covers the uncompressed content, so it proves the whole path
// (compression, transfer, backend, decompression) end to end, and it doubles
// as a content identity: wal-push compares it to decide whether an archived
// file is the same as the one already stored. SHA-256 is in the standard
// library, is hardware-accelerated on current x86-64 and arm64 CPUs (well
// over 1 GB/s, faster than any codec here compresses), and is collision
// resistant, which a CRC is not. PostgreSQL's own backup_manifest can use the
// same algorithm.
//
// # Durability
//
// Backends make a Put visible only when it is complete: the local backend
// writes a temporary file, checks the byte count, fsyncs it, renames it into
// place and fsyncs the directory; S3 shows an object only when PutObject or
// CompleteMultipartUpload succeeds and aborts the multipart upload on any
// failure or cancellation. When Put returns nil the object is durable.
package storage
