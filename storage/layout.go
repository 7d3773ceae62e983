package storage

import (
	"fmt"
	"strconv"
	"strings"
)

// The repository layout, defined here and nowhere else (format version 1):
//
//	walkeeper.json                         repository identity (plain JSON)
//	wal/<TTTTTTTTXXXXXXXXYYYYYYYY><ext>    a complete WAL segment
//	wal/<TTTTTTTTXXXXXXXXYYYYYYYY>.partial<ext>
//	                                       the newest, unfinished segment
//	wal/<TTTTTTTT>.history<ext>            a timeline history file
//	backups/<ID>/...                       one base backup; backup.json last
//	locks/<name>.json                      advisory locks
//	streams/<slot>.json                    heartbeat of a running stream
//
// <ext> is the codec's extension (".zst", ".lz4", ".gz", ".s2", or nothing
// for none); the object header is what readers trust.
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

// FormatVersion is the repository format this walkeeper writes and the
// newest it can read.
const FormatVersion = 1

// WALKey is the key (without codec extension) of a WAL file name such as
// "000000010000000000000001", "000000010000000000000001.partial" or
// "00000002.history".
func WALKey(name string) string { return WALPrefix + name }

// BackupKey is the key (without codec extension) of a file of backup id.
func BackupKey(id, name string) string { return BackupsPrefix + id + "/" + name }

// SegmentName is PostgreSQL's file name for segment segno of timeline tli
// with segments of segSize bytes.
func SegmentName(tli uint32, segno, segSize uint64) string {
	perID := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, segno/perID, segno%perID)
}

// ParseSegmentName is the inverse of SegmentName.
func ParseSegmentName(name string, segSize uint64) (tli uint32, segno uint64, err error) {
	if !IsSegmentName(name) {
		return 0, 0, fmt.Errorf("%q is not a WAL segment name (24 hexadecimal digits)", name)
	}
	t, _ := strconv.ParseUint(name[0:8], 16, 32)
	hi, _ := strconv.ParseUint(name[8:16], 16, 32)
	lo, _ := strconv.ParseUint(name[16:24], 16, 32)
	perID := uint64(0x100000000) / segSize
	if lo >= perID {
		return 0, 0, fmt.Errorf("%q is not a valid segment name for %d-byte segments", name, segSize)
	}
	return uint32(t), hi*perID + lo, nil
}

// HistoryName is the file name of timeline tli's history file.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// IsSegmentName reports whether s is 24 upper-case hexadecimal digits.
func IsSegmentName(s string) bool {
	return len(s) == 24 && isUpperHex(s)
}

// IsHistoryName reports whether s looks like "0000000A.history".
func IsHistoryName(s string) bool {
	return len(s) == 16 && strings.HasSuffix(s, ".history") && isUpperHex(s[:8])
}

// WALKind says what a file under wal/ is, by its name.
type WALKind int

const (
	WALOther       WALKind = iota // a name that is none of these
	WALSegment                    // 000000010000000000000003
	WALPartial                    // 000000010000000000000003.partial
	WALHistory                    // 00000002.history
	WALBackupLabel                // 000000010000000000000003.00000028.backup
)

// ParseWALName tells what the WAL file name (no wal/ prefix, no codec
// extension) is and, for a segment, a partial or a backup label, the name of
// the segment it belongs to.
func ParseWALName(name string) (kind WALKind, segment string) {
	switch {
	case IsSegmentName(name):
		return WALSegment, name
	case IsHistoryName(name):
		return WALHistory, ""
	case strings.HasSuffix(name, ".partial") && IsSegmentName(strings.TrimSuffix(name, ".partial")):
		return WALPartial, name[:24]
	case len(name) == 24+1+8+len(".backup") && name[24] == '.' && strings.HasSuffix(name, ".backup") &&
		IsSegmentName(name[:24]) && isUpperHex(name[25:33]):
		return WALBackupLabel, name[:24]
	}
	return WALOther, ""
}

// WALNameOf is the WAL file name a stored key under wal/ holds: the key
// without the prefix and the codec extension.
func WALNameOf(key string) string {
	base, _, _ := SplitExt(key)
	return strings.TrimPrefix(base, WALPrefix)
}

func isUpperHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

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
