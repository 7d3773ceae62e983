package walstream

import "github.com/walkeeper/walkeeper/internal/replication"

// LSN is a WAL position.
type LSN = replication.LSN

// ParseLSN parses an LSN strictly (see replication.ParseLSN).
func ParseLSN(s string) (LSN, error) { return replication.ParseLSN(s) }

// ValidateSlotName checks a slot name the way PostgreSQL does.
func ValidateSlotName(name string) error { return replication.ValidateSlotName(name) }

func segStart(lsn LSN, segSize uint64) LSN { return replication.SegStart(lsn, segSize) }
