package replication

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestParseGUCSize(t *testing.T) {
	for in, want := range map[string]uint64{"16MB": 16 << 20, "1GB": 1 << 30, "64kB": 64 << 10, "512B": 512, "8192": 8192} {
		if got, err := parseGUCSize(in); err != nil || got != want {
			t.Errorf("parseGUCSize(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := parseGUCSize("lots"); err == nil {
		t.Error("garbage accepted")
	}
}

func TestRedact(t *testing.T) {
	for _, in := range []string{
		"failed: postgres://walkeeper:s3cret@db1:5432/postgres",
		"failed: host=db1 password=s3cret user=walkeeper",
	} {
		if got := Redact(errors.New(in)).Error(); strings.Contains(got, "s3cret") {
			t.Errorf("Redact(%q) = %q", in, got)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err       error
		want      string
		permanent bool
	}{
		{&pgconn.PgError{Code: "28P01", Message: "password authentication failed"}, "pgpass", true},
		{&pgconn.PgError{Code: "28000", Message: "no pg_hba.conf entry for replication connection"}, "pg_hba.conf", true},
		{&pgconn.PgError{Code: "42501", Message: "permission denied to start WAL sender"}, "REPLICATION attribute", true},
		{&pgconn.PgError{Code: "53300", Message: "number of requested standby connections exceeds max_wal_senders"}, "max_wal_senders", false},
		{&pgconn.PgError{Code: "0A000", Message: "cannot use READ_REPLICATION_SLOT with a logical replication slot"}, "logical slot", true},
		// PostgreSQL 18, as seen from START_REPLICATION on an invalidated slot.
		{&pgconn.PgError{Code: "55000", Message: `can no longer access replication slot "s"`,
			Detail: `This replication slot has been invalidated due to "idle_timeout".`}, "idle_replication_slot_timeout", true},
		{&pgconn.PgError{Code: "55000", Message: `can no longer access replication slot "s"`,
			Detail: `This replication slot has been invalidated due to "wal_removed".`}, "invalidation_reason=wal_removed", true},
	} {
		err := Classify(tc.err, "s")
		if !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrPermanent) != tc.permanent {
			t.Errorf("Classify(%v) = %v (permanent %v)", tc.err, err, errors.Is(err, ErrPermanent))
		}
	}
}
