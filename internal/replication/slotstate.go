package replication

import (
	"fmt"
	"regexp"
)

// InvalidationReasonSQL is the select-list expression for
// pg_replication_slots.invalidation_reason (why a slot was invalidated:
// wal_removed, idle_timeout, ...), a column PostgreSQL 17 added; before 17
// it is the empty string.
func InvalidationReasonSQL(major int) string {
	if major >= 17 {
		return "coalesce(invalidation_reason, '')"
	}
	return "''"
}

// Invalidated describes an invalidated physical slot (wal_status = lost)
// and what to do about it. reason is pg_replication_slots'
// invalidation_reason, "" when the server does not say (before 17).
//
// A slot is lost when the server removed WAL it held (max_slot_wal_keep_size
// on every version: wal_removed) or, from PostgreSQL 18 on, when it was
// inactive longer than idle_replication_slot_timeout (idle_timeout; the
// WAL may still be there, but the server refuses the slot). Either way the
// archive may have a gap, and the slot cannot be used again.
func Invalidated(slot, reason string) (what, hint string) {
	fix := fmt.Sprintf("take a new base backup and recreate the slot (SELECT pg_drop_replication_slot('%s'); walkeeper stream creates it again)", slot)
	switch reason {
	case "", "wal_removed":
		what = fmt.Sprintf("replication slot %q was invalidated (wal_status=lost", slot)
		if reason != "" {
			what += ", invalidation_reason=" + reason
		}
		return what + "): the server removed WAL it held", fix + "; raise max_slot_wal_keep_size so a stopped stream has more time"
	case "idle_timeout":
		return fmt.Sprintf("replication slot %q was invalidated (invalidation_reason=idle_timeout): it was inactive longer than idle_replication_slot_timeout", slot),
			fix + "; raise idle_replication_slot_timeout, or set it to 0 (off)"
	}
	return fmt.Sprintf("replication slot %q was invalidated (invalidation_reason=%s)", slot, reason), fix
}

// invalidatedDetailRE reads the reason from PostgreSQL 18's refusal of an
// invalidated slot ("This replication slot has been invalidated due to
// \"idle_timeout\".").
var invalidatedDetailRE = regexp.MustCompile(`invalidated due to "([a-z_]+)"`)
