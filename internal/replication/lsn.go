package replication

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
)

// LSN is a WAL position.
type LSN = pglogrepl.LSN

// ParseLSN parses "16/B374D848" strictly: two hexadecimal numbers of at most
// eight digits separated by one slash, nothing else (pglogrepl.ParseLSN
// accepts trailing garbage).
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: use the form 16/B374D848", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q: use the form 16/B374D848", s)
	}
	return LSN(h<<32 | l), nil
}

// SegStart rounds lsn down to the start of its segment.
func SegStart(lsn LSN, segSize uint64) LSN { return LSN(uint64(lsn) - uint64(lsn)%segSize) }
