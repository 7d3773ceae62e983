package storage

import "strings"

// The repository layout, defined here and nowhere else (format version 3):
//
//	walkeeper.json                         repository identity (plain JSON)
//	wal/<TTTTTTTTXXXXXXXX>/<TTTTTTTTXXXXXXXXYYYYYYYY><ext>
//	                                       a complete WAL segment, in its group
//	                                       (format 1: directly under wal/)
//	wal/<TTTTTTTTXXXXXXXX>/<TTTTTTTTXXXXXXXXYYYYYYYY>.partial<ext>
//	                                       the newest, unfinished segment (a prefix)
//	wal/<TTTTTTTTXXXXXXXX>/<TTTTTTTTXXXXXXXXYYYYYYYY>.<SSSSSSSS>-<EEEEEEEE>.range<ext>
//	                                       format 3: bytes [S, E) of an unfinished
//	                                       segment (docs/repository-format.md)
//	wal/<TTTTTTTT>.history<ext>            a timeline history file
//	backups/<ID>/...                       one base backup; started.json first
//	                                       (created only if absent), backup.json last;
//	                                       <ID> is 20261126T013500.123Z-3f9a1c
//	                                       (basebackup.NewID), formerly 20261126T013500Z
//	locks/<name>.json                      locks, written only conditionally (lock.go)
//	streams/<slot>.json                    heartbeat of a running stream
//
// <ext> is the codec's extension (".zst", ".lz4", ".gz", ".s2", or nothing
// for none); the object header is what readers trust. The keys under wal/
// are the archive package's (storage/archive, layout.go): it is the only
// code that makes or parses them, in the layout of the repository's
// format version (Repository.Format).
const (
	ConfigKey     = "walkeeper.json"
	WALPrefix     = "wal/"
	BackupsPrefix = "backups/"
	LocksPrefix   = "locks/"
	StreamsPrefix = "streams/"
)

// StreamStatusKey is where the stream of slot writes its heartbeat.
func StreamStatusKey(slot string) string { return StreamsPrefix + slot + ".json" }

// BackupMetaKey is the key of a backup's backup.json, its commit marker.
func BackupMetaKey(id string) string { return BackupsPrefix + id + "/backup.json" }

// FormatVersion is the repository format this walkeeper creates for an
// unencrypted repository; it reads and writes every older one in its own
// layout. 2: WAL segments grouped by 4 GB; 3: unfinished segments as
// appended ranges (older repositories keep whole .partial objects).
const FormatVersion = 3

// EncryptedFormatVersion is the format of an encrypted repository: format
// 3's layout with every enveloped object encrypted (envelope version 2).
// It exists so that a walkeeper that predates encryption refuses such a
// repository ("upgrade walkeeper") instead of misreading it, while
// unencrypted repositories stay readable by it.
const EncryptedFormatVersion = 4

// NewestFormatVersion is the newest format this walkeeper reads.
const NewestFormatVersion = EncryptedFormatVersion

// BackupKey is the key (without codec extension) of a file of backup id.
func BackupKey(id, name string) string { return BackupsPrefix + id + "/" + name }

// SplitExt splits a stored key into its base (what WALKey or BackupKey
// returned) and the codec its extension names. ok is false when the key has
// no known codec extension; then the key is a base key of codec none.
func SplitExt(key string) (base string, c Codec, ok bool) {
	for cc, ext := range codecExts {
		if ext != "" && strings.HasSuffix(key, ext) {
			return strings.TrimSuffix(key, ext), cc, true
		}
	}
	return key, CodecNone, false
}
