package archive

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind says what a file under wal/ is.
type Kind int

// The kinds of WAL file names.
const (
	Other       Kind = iota // a name that is none of these
	Segment                 // 000000010000000000000003
	Partial                 // 000000010000000000000003.partial
	History                 // 00000002.history
	BackupLabel             // 000000010000000000000003.00000028.backup
	// Range is an appended range of an unfinished segment (format 3): the
	// bytes from offset 0x00A10000 to 0x00A10400 of the segment.
	Range // 000000010000000000000003.00A10000-00A10400.range
)

func (k Kind) String() string {
	switch k {
	case Segment:
		return "segment"
	case Partial:
		return "partial segment"
	case History:
		return "history file"
	case BackupLabel:
		return "backup history file"
	case Range:
		return "appended range"
	}
	return "other"
}

// isWAL reports whether the kind holds WAL: a segment, complete or
// unfinished (a partial or a range).
func (k Kind) isWAL() bool { return k == Segment || k == Partial || k == Range }

// HoldsWAL reports whether the kind holds WAL of a segment: a complete
// segment, a partial or a range.
func (k Kind) HoldsWAL() bool { return k.isWAL() }

// Name is a parsed WAL file name. Seg is the segment number (bytes from
// the start of WAL divided by the segment size) for segments, partials and
// backup labels and ranges; Offset is a backup label's start offset in its
// segment, or a range's first byte; End is the offset just after a range's
// last byte.
type Name struct {
	Kind   Kind
	TLI    uint32
	Seg    uint64
	Offset uint32
	End    uint32
}

// SegmentName is PostgreSQL's file name for segment seg of timeline tli
// with segments of segSize bytes.
func SegmentName(tli uint32, seg, segSize uint64) string {
	perID := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, seg/perID, seg%perID)
}

// HistoryName is the file name of timeline tli's history file.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// RangeName is the file name of the range of segment seg of timeline tli
// holding the bytes at offsets [from, to) of the segment. The names of a
// segment's ranges start with the segment's name and a dot, so one listing
// of that prefix finds them (and nothing of another segment), and they
// sort by their first byte.
func RangeName(tli uint32, seg, segSize uint64, from, to uint32) string {
	return fmt.Sprintf("%s.%08X-%08X.range", SegmentName(tli, seg, segSize), from, to)
}

// File is the file name of n: the inverse of ParseName.
func (n Name) File(segSize uint64) string {
	switch n.Kind {
	case Segment:
		return SegmentName(n.TLI, n.Seg, segSize)
	case Partial:
		return SegmentName(n.TLI, n.Seg, segSize) + ".partial"
	case History:
		return HistoryName(n.TLI)
	case BackupLabel:
		return fmt.Sprintf("%s.%08X.backup", SegmentName(n.TLI, n.Seg, segSize), n.Offset)
	case Range:
		return RangeName(n.TLI, n.Seg, segSize, n.Offset, n.End)
	}
	return ""
}

// SegmentFile is the name of the segment n is or belongs to.
func (n Name) SegmentFile(segSize uint64) string { return SegmentName(n.TLI, n.Seg, segSize) }

// KindOf tells what the file name s is, without the segment size.
func KindOf(s string) Kind {
	switch {
	case len(s) == 24 && isUpperHex(s):
		return Segment
	case len(s) == 16 && strings.HasSuffix(s, ".history") && isUpperHex(s[:8]):
		return History
	case len(s) == 24+len(".partial") && strings.HasSuffix(s, ".partial") && isUpperHex(s[:24]):
		return Partial
	case len(s) == 24+1+8+len(".backup") && s[24] == '.' && strings.HasSuffix(s, ".backup") &&
		isUpperHex(s[:24]) && isUpperHex(s[25:33]):
		return BackupLabel
	case len(s) == 24+1+8+1+8+len(".range") && s[24] == '.' && s[33] == '-' && strings.HasSuffix(s, ".range") &&
		isUpperHex(s[:24]) && isUpperHex(s[25:33]) && isUpperHex(s[34:42]):
		return Range
	}
	return Other
}

// ParseName parses the WAL file name s (no wal/ prefix, no codec
// extension) for segments of segSize bytes. A name of no WAL kind, or a
// segment number that does not exist with this segment size, is an error.
func ParseName(s string, segSize uint64) (Name, error) {
	n := Name{Kind: KindOf(s)}
	switch n.Kind {
	case Other:
		return n, fmt.Errorf("%q is not a WAL file name (such as 000000010000000000000003, 00000002.history)", s)
	case History:
		t, _ := strconv.ParseUint(s[:8], 16, 32)
		n.TLI = uint32(t)
		if n.TLI == 0 {
			return n, fmt.Errorf("%q names timeline 0, which does not exist", s)
		}
		return n, nil
	}
	if segSize == 0 || segSize&(segSize-1) != 0 || segSize > 1<<30 {
		return n, fmt.Errorf("WAL segment size %d is not a power of two up to 1 GB", segSize)
	}
	t, _ := strconv.ParseUint(s[0:8], 16, 32)
	hi, _ := strconv.ParseUint(s[8:16], 16, 32)
	lo, _ := strconv.ParseUint(s[16:24], 16, 32)
	perID := uint64(0x100000000) / segSize
	if lo >= perID {
		return n, fmt.Errorf("%q is not a segment name for %d-byte segments", s, segSize)
	}
	if t == 0 {
		return n, fmt.Errorf("%q names timeline 0, which does not exist", s)
	}
	n.TLI, n.Seg = uint32(t), hi*perID+lo
	switch n.Kind {
	case BackupLabel:
		off, _ := strconv.ParseUint(s[25:33], 16, 32)
		n.Offset = uint32(off)
	case Range:
		from, _ := strconv.ParseUint(s[25:33], 16, 32)
		to, _ := strconv.ParseUint(s[34:42], 16, 32)
		if from >= to || to > segSize {
			return n, fmt.Errorf("%q is not a range of a %d-byte segment (it must hold at least one byte, and end within the segment)", s, segSize)
		}
		n.Offset, n.End = uint32(from), uint32(to)
	}
	return n, nil
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

// ErrInvalidName marks a name given to wal-fetch or wal-push that is not a
// plain file name (a path, a dot file, characters outside [A-Za-z0-9._-])
// or, for wal-push, not a WAL file name at all.
var ErrInvalidName = errors.New("invalid WAL file name")

// CheckFileName checks that name, as restore_command or archive_command
// passes it, is a plain file name, and tells its kind (Other for a plain
// name of no WAL kind).
func CheckFileName(name string) (Kind, error) {
	if name == "" || name == "." || name == ".." || strings.HasPrefix(name, ".") || len(name) > 255 {
		return 0, fmt.Errorf("%w %q: want a WAL file name such as 000000010000000000000003", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return 0, fmt.Errorf("%w %q: want a WAL file name such as 000000010000000000000003", ErrInvalidName, name)
		}
	}
	return KindOf(name), nil
}
