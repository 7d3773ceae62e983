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
	}
	return "other"
}

// Name is a parsed WAL file name. Seg is the segment number (bytes from
// the start of WAL divided by the segment size) for segments, partials and
// backup labels; Offset is a backup label's start offset in its segment.
type Name struct {
	Kind   Kind
	TLI    uint32
	Seg    uint64
	Offset uint32
}

// SegmentName is PostgreSQL's file name for segment seg of timeline tli
// with segments of segSize bytes.
func SegmentName(tli uint32, seg, segSize uint64) string {
	perID := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, seg/perID, seg%perID)
}

// HistoryName is the file name of timeline tli's history file.
func HistoryName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

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
	if n.Kind == BackupLabel {
		off, _ := strconv.ParseUint(s[25:33], 16, 32)
		n.Offset = uint32(off)
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
