package replication

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline TLI ended
// at Switchpoint, where its child timeline began.
type HistoryEntry struct {
	TLI         uint32
	Switchpoint LSN
}

// ParseHistory parses a timeline history file ("1\t0/3000000\treason"
// lines, oldest ancestor first). Like PostgreSQL it requires the timelines
// to increase.
func ParseHistory(content []byte) ([]HistoryEntry, error) {
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(content))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("bad timeline history line %q", line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad timeline history line %q", line)
		}
		sp, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("bad timeline history line %q: %w", line, err)
		}
		if n := len(out); n > 0 && uint32(tli) <= out[n-1].TLI {
			return nil, fmt.Errorf("bad timeline history line %q: timelines must increase", line)
		}
		out = append(out, HistoryEntry{TLI: uint32(tli), Switchpoint: sp})
	}
	return out, sc.Err()
}
